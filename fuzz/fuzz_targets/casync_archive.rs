//! Fuzz target `casync_archive`: see `rota_fuzz::casync_archive`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: rota_fuzz::warm_up("casync_archive", std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))),
    |data: &[u8]| rota_fuzz::casync_archive(data)
);
