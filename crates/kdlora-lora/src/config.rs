//! [`LoraConfig`]: which projections get adapters, with which rank and scaling, and which head
//! modules are trained in full.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::LoraError;

/// How `A` is initialised (`B` always starts at zero, so the adapted model equals the base model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraInit {
    /// Kaiming-uniform with `a = sqrt(5)`: `U(-1/sqrt(d_in), 1/sqrt(d_in))` (PEFT's default).
    #[default]
    KaimingUniform,
    /// `N(0, 1/r^2)` (PEFT's `init_lora_weights="gaussian"`).
    Gaussian,
}

/// Which linear modules receive adapters, in PEFT's two spellings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names: a name matches a module path equal to it or ending with `.name`
    /// (`query` matches `bert.encoder.layer.0.attention.self.query`; `attention.output.dense`
    /// matches `bert.encoder.layer.3.attention.output.dense` but not `...layer.3.output.dense`).
    Names(Vec<String>),
    /// A regular expression that must match the whole module path (Python's `re.fullmatch`).
    Regex(String),
}

impl TargetModules {
    /// Target names from string slices.
    pub fn names<S: AsRef<str>>(names: &[S]) -> Self {
        Self::Names(names.iter().map(|s| s.as_ref().to_string()).collect())
    }

    /// Compiles the targets into a matcher (a bad regex is an error).
    pub fn matcher(&self) -> Result<TargetMatcher, LoraError> {
        Ok(match self {
            Self::Names(names) => TargetMatcher::Names(names.clone()),
            Self::Regex(pattern) => TargetMatcher::Regex(
                pattern.clone(),
                Regex::new(&format!("^(?:{pattern})$")).map_err(|source| {
                    LoraError::InvalidRegex {
                        pattern: pattern.clone(),
                        source,
                    }
                })?,
            ),
        })
    }
}

/// Compiled [`TargetModules`].
#[derive(Debug, Clone)]
pub enum TargetMatcher {
    /// Exact names (see [`TargetModules::Names`]).
    Names(Vec<String>),
    /// The pattern as written and its anchored compilation.
    Regex(String, Regex),
}

impl TargetMatcher {
    /// Whether `path` is a target.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Names(names) => names.iter().any(|name| name_matches(name, path)),
            Self::Regex(_, re) => re.is_match(path),
        }
    }

    /// The targets as written: each name, or the one regex. Each must match at least one module.
    pub fn entries(&self) -> Vec<String> {
        match self {
            Self::Names(names) => names.clone(),
            Self::Regex(pattern, _) => vec![pattern.clone()],
        }
    }

    /// Whether the entry at `index` of [`entries`](Self::entries) matches `path`.
    pub fn entry_matches(&self, index: usize, path: &str) -> bool {
        match self {
            Self::Names(names) => names.get(index).is_some_and(|n| name_matches(n, path)),
            Self::Regex(_, re) => index == 0 && re.is_match(path),
        }
    }
}

/// PEFT's rule for a target name: the path equals it or ends with `.name`.
pub fn name_matches(name: &str, path: &str) -> bool {
    path == name
        || (path.len() > name.len()
            && path.ends_with(name)
            && path.as_bytes()[path.len() - name.len() - 1] == b'.')
}

/// Whether a linear at `path` lies inside (or is) a module that PEFT's `modules_to_save` entry
/// `name` wraps. PEFT 0.13 wraps every module whose path *ends with* `name` as a plain string, so
/// `classifier` covers `classifier`, `classifier.out_proj` (inside a wrapped `classifier`) and also
/// DistilBERT's `pre_classifier`; kdlora follows that rule so its adapters mean the same in PEFT.
pub fn module_covers(name: &str, path: &str) -> bool {
    !name.is_empty()
        && path
            .match_indices('.')
            .map(|(i, _)| &path[..i])
            .chain(std::iter::once(path))
            .any(|prefix| prefix.ends_with(name))
}

/// LoRA hyper-parameters and targeting. Defaults reproduce the paper (KD-LoRA, arXiv 2410.20777):
/// rank 8, alpha 16, dropout 0.05, query and value projections, trained classification head.
///
/// Serialises as TOML/JSON; every field is optional when reading (missing ones take the defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` of every adapter.
    pub r: usize,
    /// `lora_alpha`: the scaling numerator.
    pub alpha: f64,
    /// Dropout probability on the adapter input.
    pub dropout: f64,
    /// rsLoRA scaling `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Initialisation of `A`.
    pub init: LoraInit,
    /// Target modules; `None` takes [`LoraConfig::default_targets_for`] the model's type.
    pub target_modules: Option<TargetModules>,
    /// Modules trained in full and saved with the adapter; `None` takes the model's head
    /// (`AdaptableModel::head_module_paths`).
    pub modules_to_save: Option<Vec<String>>,
    /// Whether the `modules_to_save` are trainable (the paper trains the head).
    pub train_head: bool,
    /// Seed for the initialisation of `A`. Each module draws from its own stream derived from
    /// `(seed, module path)`, so results do not depend on the backend or on the other targets.
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            use_rslora: false,
            init: LoraInit::KaimingUniform,
            target_modules: None,
            modules_to_save: None,
            train_head: true,
            seed: 42,
        }
    }
}

impl LoraConfig {
    /// The paper's query + value targets for a Hugging Face `model_type`:
    /// `bert`/`roberta` `query`, `value`; `distilbert` `q_lin`, `v_lin`;
    /// `deberta-v2` `query_proj`, `value_proj`.
    pub fn default_targets_for(model_type: &str) -> Result<TargetModules, LoraError> {
        let names: &[&str] = match model_type {
            "bert" | "roberta" | "xlm-roberta" => &["query", "value"],
            "distilbert" => &["q_lin", "v_lin"],
            "deberta-v2" => &["query_proj", "value_proj"],
            other => {
                return Err(LoraError::NoDefaultTargets {
                    model_type: other.to_string(),
                });
            }
        };
        Ok(TargetModules::names(names))
    }

    /// The configured targets, or the defaults for `model_type`.
    pub fn targets_for(&self, model_type: &str) -> Result<TargetModules, LoraError> {
        match &self.target_modules {
            Some(t) => Ok(t.clone()),
            None => Self::default_targets_for(model_type),
        }
    }

    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Checks ranges: `r >= 1`, finite `alpha`, `0 <= dropout < 1`, a compilable regex and a
    /// non-empty name list.
    pub fn validate(&self) -> Result<(), LoraError> {
        if self.r == 0 {
            return Err(invalid("r", self.r, "the rank must be at least 1"));
        }
        if !self.alpha.is_finite() {
            return Err(invalid("lora_alpha", self.alpha, "must be finite"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid("lora_dropout", self.dropout, "must be in [0, 1)"));
        }
        match &self.target_modules {
            Some(TargetModules::Names(names)) if names.is_empty() => {
                return Err(invalid(
                    "target_modules",
                    "[]",
                    "name at least one module (or leave it unset for the defaults)",
                ));
            }
            Some(t) => {
                t.matcher()?;
            }
            None => {}
        }
        Ok(())
    }
}

fn invalid(field: &'static str, value: impl ToString, reason: &str) -> LoraError {
    LoraError::InvalidConfig {
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers() {
        let c = LoraConfig::default();
        assert_eq!((c.r, c.alpha, c.dropout), (8, 16.0, 0.05));
        assert!(!c.use_rslora && c.train_head);
        assert_eq!(c.scaling(), 2.0);
        let rs = LoraConfig {
            use_rslora: true,
            r: 16,
            ..c
        };
        assert_eq!(rs.scaling(), 4.0);
    }

    #[test]
    fn default_targets_per_architecture() {
        let t = |m| LoraConfig::default_targets_for(m).unwrap();
        assert_eq!(t("bert"), TargetModules::names(&["query", "value"]));
        assert_eq!(t("roberta"), TargetModules::names(&["query", "value"]));
        assert_eq!(t("distilbert"), TargetModules::names(&["q_lin", "v_lin"]));
        assert_eq!(
            t("deberta-v2"),
            TargetModules::names(&["query_proj", "value_proj"])
        );
        let err = LoraConfig::default_targets_for("gpt2").unwrap_err();
        assert!(err.to_string().contains("gpt2"), "{err}");
    }

    #[test]
    fn names_match_whole_components_only() {
        let p = "bert.encoder.layer.0.attention.self.query";
        assert!(name_matches("query", p));
        assert!(name_matches("self.query", p));
        assert!(name_matches(p, p));
        assert!(!name_matches("uery", p));
        assert!(!name_matches(
            "query",
            "bert.encoder.layer.0.attention.self.key_query"
        ));
        let d = "bert.encoder.layer.3.attention.output.dense";
        assert!(name_matches("attention.output.dense", d));
        assert!(!name_matches(
            "attention.output.dense",
            "bert.encoder.layer.3.output.dense"
        ));
    }

    #[test]
    fn regex_must_match_the_whole_path() {
        let m = TargetModules::Regex(r".*\.(query|value)".into())
            .matcher()
            .unwrap();
        assert!(m.matches("bert.encoder.layer.0.attention.self.query"));
        assert!(!m.matches("bert.encoder.layer.0.attention.self.query_bias"));
        let m = TargetModules::Regex("query".into()).matcher().unwrap();
        assert!(!m.matches("bert.encoder.layer.0.attention.self.query"));
        let err = TargetModules::Regex("(".into()).matcher().unwrap_err();
        assert!(matches!(err, LoraError::InvalidRegex { .. }));
    }

    #[test]
    fn modules_to_save_cover_submodules() {
        assert!(module_covers("classifier", "classifier"));
        assert!(module_covers("classifier", "classifier.out_proj"));
        // PEFT's plain suffix rule: DistilBERT's pre_classifier is wrapped too.
        assert!(module_covers("classifier", "pre_classifier"));
        assert!(module_covers("pooler", "deberta.pooler.dense"));
        assert!(!module_covers(
            "classifier",
            "bert.encoder.layer.0.output.dense"
        ));
        assert!(!module_covers("dense", "classifier.dense_x"));
        assert!(!module_covers("", "classifier"));
    }

    #[test]
    fn validate_rejects_bad_values() {
        let bad = |c: LoraConfig| c.validate().unwrap_err().to_string();
        assert!(
            bad(LoraConfig {
                r: 0,
                ..Default::default()
            })
            .contains("r = 0")
        );
        assert!(
            bad(LoraConfig {
                dropout: 1.0,
                ..Default::default()
            })
            .contains("lora_dropout")
        );
        assert!(
            bad(LoraConfig {
                alpha: f64::NAN,
                ..Default::default()
            })
            .contains("lora_alpha")
        );
        assert!(
            bad(LoraConfig {
                target_modules: Some(TargetModules::Names(vec![])),
                ..Default::default()
            })
            .contains("target_modules")
        );
        LoraConfig::default().validate().unwrap();
    }

    #[test]
    fn serde_round_trip_and_peft_spellings() {
        let c = LoraConfig {
            target_modules: Some(TargetModules::names(&["query", "attention.output.dense"])),
            modules_to_save: Some(vec!["classifier".into()]),
            init: LoraInit::Gaussian,
            ..Default::default()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<LoraConfig>(&json).unwrap(), c);
        let c: LoraConfig =
            serde_json::from_str(r#"{"r": 4, "target_modules": ".*query"}"#).unwrap();
        assert_eq!(c.r, 4);
        assert_eq!(c.alpha, 16.0);
        assert_eq!(
            c.target_modules,
            Some(TargetModules::Regex(".*query".into()))
        );
        let err = serde_json::from_str::<LoraConfig>(r#"{"rank": 4}"#).unwrap_err();
        assert!(err.to_string().contains("rank"), "{err}");
    }
}
