//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) and every input that
//! once made a target fail (`fuzz/regressions/<target>/`) through the same
//! target bodies cargo-fuzz runs (`fuzz/src/targets.rs`): on every CI run,
//! none may panic. The fuzzing itself is `scripts/fuzz` (RELIABILITY.md).

#[allow(dead_code)]
#[path = "../../fuzz/src/targets.rs"]
mod targets;

use std::fs;
use testkit::workspace;

#[test]
fn every_corpus_and_regression_input_passes_its_target() {
    let mut total = 0;
    for (name, target) in targets::TARGETS {
        let mut seen = 0;
        for kind in ["corpus", "regressions"] {
            let dir = workspace().join("fuzz").join(kind).join(name);
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            let mut files: Vec<_> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
            files.sort();
            for f in files {
                let data = fs::read(&f).unwrap();
                let run = std::panic::catch_unwind(|| target(&data));
                assert!(run.is_ok(), "{name}: {} fails", f.display());
                seen += 1;
            }
        }
        assert!(seen > 0, "no corpus for {name}");
        total += seen;
    }
    targets::remove_scratch();
    assert!(
        !std::env::temp_dir().join(format!("rota-fuzz-{}", std::process::id())).exists(),
        "the replay left its scratch directory"
    );
    eprintln!("fuzz corpora: {total} inputs replayed");
}
