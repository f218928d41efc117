//! Fuzz target `slot_status`: see `rota_fuzz::slot_status`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: rota_fuzz::warm_up("slot_status", std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))),
    |data: &[u8]| rota_fuzz::slot_status(data)
);
