//! Fuzzes opening a bundle from arbitrary bytes: the trailer and CMS parsing,
//! the (unverified, --no-verify) manifest, the verity reader and the squashfs
//! parser over it, and reading every file. Also feeds the bytes straight to
//! the squashfs layer. Nothing may panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rota_bundle::bundle::{Bundle, OpenOptions};
use rota_bundle::signature::VerifyOptions;
use rota_bundle::source::ReadAt;
use rota_bundle::squashfs::{BundleFs, EntryKind};
use std::sync::Arc;

fn read_everything(fs: &BundleFs) {
    for e in fs.entries().into_iter().take(64) {
        if let EntryKind::File(size) = e.kind
            && size < 8 << 20
        {
            let _ = fs.read_file(&e.path);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let opts = OpenOptions {
        verify: VerifyOptions { no_verify: true, ..VerifyOptions::default() },
        ..OpenOptions::default()
    };
    let source: Arc<dyn ReadAt> = Arc::new(data.to_vec());
    if let Ok(bundle) = Bundle::open_source("fuzz", source.clone(), None, &opts) {
        let _ = bundle.check_payload();
        if let Ok(fs) = bundle.filesystem() {
            read_everything(&fs);
        }
    }
    if let Ok(fs) = BundleFs::open(source) {
        read_everything(&fs);
    }
});
