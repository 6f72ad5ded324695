//! CI replays what the fuzzers found: every file in `fuzz/regressions/<target>/` (each target's minimized
//! corpus, plus the inputs that once found a bug) goes through the same oracle the fuzz target uses
//! (`fuzz/checks.rs`). Refresh with `fuzz/run.sh` and `fuzz/minimize.sh`.

use crate::fuzz_checks as checks;

#[test]
fn every_committed_fuzz_input_passes_its_oracle() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for (target, check) in checks::TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(
            inputs.len() >= 10,
            "{target}: a corpus to replay ({} inputs)",
            inputs.len()
        );
        for path in inputs {
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                panic!("{target}: {} fails its oracle", path.display());
            }
        }
    }
}
