//! Fuzz target `tree_index`: see `rota_fuzz::tree_index`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: rota_fuzz::warm_up("tree_index", std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))),
    |data: &[u8]| rota_fuzz::tree_index(data)
);
