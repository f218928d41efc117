//! Fuzz target `http_response`: see `rota_fuzz::http_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: rota_fuzz::warm_up("http_response", std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))),
    |data: &[u8]| rota_fuzz::http_response(data)
);
