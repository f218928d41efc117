//! Fuzz target `open_bundle`: see `rota_fuzz::open_bundle`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: rota_fuzz::warm_up("open_bundle", std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))),
    |data: &[u8]| rota_fuzz::open_bundle(data)
);
