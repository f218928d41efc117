//! Fuzz target `manifest`: see `rota_fuzz::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: rota_fuzz::warm_up("manifest", std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))),
    |data: &[u8]| rota_fuzz::manifest(data)
);
