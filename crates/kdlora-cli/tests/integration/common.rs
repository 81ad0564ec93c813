//! What the topic modules share: running the binary, the committed fixtures, comparing logits.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `kdlora ARGS` with stdout and stderr captured (so not a terminal) at log level `level`.
pub(crate) fn kdlora_logging(level: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdlora"))
        .args(args)
        .env("RUST_LOG", level)
        .output()
        .expect("running kdlora")
}

/// A model fixture of `kdlora-encoders` (`bert_cls3`, `deberta_v3_tiny`, ...).
pub(crate) fn encoder_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kdlora-encoders/tests/fixtures")
        .join(name)
}

/// Rows of logits equal to 1e-4 (transformers and kdlora differ by float rounding only).
pub(crate) fn assert_logits_close(got: &[Vec<f64>], want: &[Vec<f64>]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() < 1e-4, "{g:?} vs {w:?}");
        }
    }
}
