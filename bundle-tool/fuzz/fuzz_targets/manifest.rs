//! Fuzzes the manifest parser: never panics, and whatever parses survives a
//! write/parse round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rota_bundle::manifest::{Manifest, ManifestCopy, ManifestOrigin};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for origin in [ManifestOrigin::Input, ManifestOrigin::Bundle] {
        if let Ok(m) = Manifest::parse(text, origin) {
            let written = m.to_text(ManifestCopy::Inline);
            let again = Manifest::parse(&written, ManifestOrigin::Bundle)
                .unwrap_or_else(|e| panic!("normalized manifest does not parse: {e}\n{written}"));
            assert_eq!(again.to_text(ManifestCopy::Inline), written, "normalization is not stable");
            let _ = m.select_images(Some("v"));
            let _ = m.meta_env();
        }
    }
});
