//! Helpers shared by the end-to-end test modules: where `../shared` is, run configs from key/value
//! overrides, and the tiny SST-2 run most training tests use.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use kdlora_train::{ConfigSources, RunConfig};

/// The shared models and GLUE data (`KDLORA_SHARED`, else `../shared` beside the checkout), or
/// `None` with a message when they are absent (the calling test then returns early).
pub fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("KDLORA_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let present = [
        "models/all-MiniLM-L6-v2/model.safetensors",
        "models/paraphrase-MiniLM-L3-v2/model.safetensors",
        "glue/SST-2/train.tsv",
    ]
    .iter()
    .all(|f| dir.join(f).is_file());
    if present {
        Some(dir)
    } else {
        eprintln!(
            "skipping: shared models/data not found at {} (set KDLORA_SHARED)",
            dir.display()
        );
        None
    }
}

/// A run config from `key = value` overrides (values in TOML syntax), checked like the CLI does.
pub fn load(pairs: &[(&str, String)]) -> kdlora_train::Result<RunConfig> {
    let overrides = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    RunConfig::load(&ConfigSources {
        file: None,
        env: Vec::new(),
        overrides,
    })
}

/// [`load`] for configs that must be valid.
pub fn config(pairs: &[(&str, String)]) -> RunConfig {
    load(pairs).unwrap()
}

/// A path as a TOML string value.
pub fn q(p: &Path) -> String {
    format!("{:?}", p.to_string_lossy())
}

/// Serialises the end-to-end tests: they share one process, and Burn's CPU RNG seeds are
/// process-wide (a LoRA init or model load in one test would change another's seeded run).
pub fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A tiny SST-2 run of the L3 student: 48 training rows, batch 8, accumulation 2, 2 epochs, warmup.
pub fn tiny(method: &str, shared: &Path, out: &Path, extra: &[(&str, String)]) -> RunConfig {
    let mut pairs = vec![
        ("method", format!("{method:?}")),
        ("task", "\"sst2\"".to_string()),
        ("model", q(&shared.join("models/paraphrase-MiniLM-L3-v2"))),
        ("data", q(&shared.join("glue"))),
        ("out", q(out)),
        ("max_train_examples", "48".to_string()),
        ("max_eval_examples", "32".to_string()),
        ("max_len", "32".to_string()),
        ("batch_size", "8".to_string()),
        ("grad_accumulation", "2".to_string()),
        ("epochs", "2".to_string()),
        ("lr", "5e-4".to_string()),
        ("warmup_ratio", "0.2".to_string()),
        ("inference_passes", "0".to_string()),
    ];
    pairs.extend(extra.iter().cloned());
    config(&pairs)
}
