//! Distillation hyper-parameters.

use serde::{Deserialize, Serialize};

use crate::DistillError;

/// Temperature and mixing weight of the KD-LoRA loss
/// `alpha * hard + (1 - alpha) * soft` (see [`kd_loss`](crate::kd_loss)).
///
/// Defaults follow the KD-LoRA reference implementation: `temperature = 2`, `alpha = 0.5`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KdConfig {
    /// Softmax temperature `T` applied to both student and teacher logits in the soft loss.
    /// Must be finite and > 0.
    pub temperature: f64,
    /// Weight of the hard (ground-truth) loss; the soft (teacher) loss gets `1 - alpha`.
    /// Must lie in `[0, 1]`.
    pub alpha: f64,
    /// Epochs at the start trained on the soft loss alone (`alpha = 0`), before the mixed loss:
    /// the student first follows the teacher, then the labels too.
    #[serde(skip_serializing_if = "is_zero")]
    pub soft_only_epochs: usize,
    /// `alpha` at the run's last optimizer step: it moves linearly from [`alpha`](Self::alpha)
    /// at the first step (unset: constant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha_end: Option<f64>,
    /// The temperature at the run's last optimizer step, linearly from
    /// [`temperature`](Self::temperature) at the first (unset: constant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_end: Option<f64>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for KdConfig {
    fn default() -> Self {
        Self {
            temperature: 2.0,
            alpha: 0.5,
            soft_only_epochs: 0,
            alpha_end: None,
            temperature_end: None,
        }
    }
}

impl KdConfig {
    /// Checks `temperature > 0` (finite) and `0 <= alpha <= 1`.
    pub fn validate(&self) -> Result<(), DistillError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(DistillError::InvalidConfig {
                key: "temperature",
                value: self.temperature.to_string(),
                reason: "must be finite and > 0",
            });
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(DistillError::InvalidConfig {
                key: "alpha",
                value: self.alpha.to_string(),
                reason: "must lie in [0, 1]",
            });
        }
        if let Some(t) = self.temperature_end
            && !(t.is_finite() && t > 0.0)
        {
            return Err(DistillError::InvalidConfig {
                key: "temperature_end",
                value: t.to_string(),
                reason: "must be finite and > 0",
            });
        }
        if let Some(a) = self.alpha_end
            && !(0.0..=1.0).contains(&a)
        {
            return Err(DistillError::InvalidConfig {
                key: "alpha_end",
                value: a.to_string(),
                reason: "must lie in [0, 1]",
            });
        }
        Ok(())
    }

    /// The constant loss settings of one optimizer step: `epoch` is 1-based, `progress` the
    /// step's place in the run (0 at the first step, 1 at the last). In the soft-only epochs
    /// `alpha` is 0; after them it follows the `alpha` -> `alpha_end` line (its value at this
    /// step, not restarted), and the temperature follows its line throughout.
    pub fn at(&self, epoch: usize, progress: f64) -> KdConfig {
        let progress = progress.clamp(0.0, 1.0);
        let line = |start: f64, end: Option<f64>| match end {
            Some(end) => start + (end - start) * progress,
            None => start,
        };
        KdConfig {
            temperature: line(self.temperature, self.temperature_end),
            alpha: if epoch <= self.soft_only_epochs {
                0.0
            } else {
                line(self.alpha, self.alpha_end)
            },
            ..KdConfig::default()
        }
    }

    /// Whether every step uses the same settings (no soft-only epochs, no schedule).
    pub fn is_constant(&self) -> bool {
        self.soft_only_epochs == 0 && self.alpha_end.is_none() && self.temperature_end.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_reference() {
        let cfg = KdConfig::default();
        assert_eq!(cfg.temperature, 2.0);
        assert_eq!(cfg.alpha, 0.5);
        cfg.validate().unwrap();
    }

    #[test]
    fn validate_rejects_out_of_range() {
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = KdConfig {
                temperature: t,
                alpha: 0.5,
                ..KdConfig::default()
            }
            .validate()
            .unwrap_err();
            assert!(err.to_string().contains("temperature"), "{err}");
        }
        for a in [-0.01, 1.01, f64::NAN] {
            let err = KdConfig {
                temperature: 2.0,
                alpha: a,
                ..KdConfig::default()
            }
            .validate()
            .unwrap_err();
            assert!(err.to_string().contains("alpha"), "{err}");
        }
        for a in [0.0, 1.0] {
            KdConfig {
                temperature: 1.0,
                alpha: a,
                ..KdConfig::default()
            }
            .validate()
            .unwrap();
        }
    }

    #[test]
    fn serde_partial_and_unknown_keys() {
        let cfg: KdConfig = serde_json::from_str(r#"{"alpha": 0.25}"#).unwrap();
        assert_eq!(
            cfg,
            KdConfig {
                temperature: 2.0,
                alpha: 0.25,
                ..KdConfig::default()
            }
        );
        assert!(serde_json::from_str::<KdConfig>(r#"{"temp": 3.0}"#).is_err());
        let back: KdConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn schedules_are_linear_over_the_run_and_soft_only_epochs_drop_the_labels() {
        let cfg = KdConfig {
            temperature: 4.0,
            alpha: 0.2,
            soft_only_epochs: 1,
            alpha_end: Some(0.6),
            temperature_end: Some(1.0),
        };
        cfg.validate().unwrap();
        assert!(!cfg.is_constant());
        // Epoch 1 is soft-only; the temperature moves all along.
        assert_eq!(
            cfg.at(1, 0.0),
            KdConfig {
                temperature: 4.0,
                alpha: 0.0,
                ..KdConfig::default()
            }
        );
        assert_eq!(cfg.at(1, 0.25).alpha, 0.0);
        assert!((cfg.at(1, 0.25).temperature - 3.25).abs() < 1e-12);
        // After it, alpha is on its line at this point of the run.
        let mid = cfg.at(2, 0.5);
        assert!((mid.alpha - 0.4).abs() < 1e-12 && (mid.temperature - 2.5).abs() < 1e-12);
        let last = cfg.at(3, 1.0);
        assert!((last.alpha - 0.6).abs() < 1e-12 && (last.temperature - 1.0).abs() < 1e-12);
        // A step's settings are constant and valid.
        assert!(last.is_constant());
        last.validate().unwrap();
        // Without a schedule every step has the configured values.
        let plain = KdConfig::default();
        assert!(plain.is_constant());
        assert_eq!(plain.at(1, 0.7), plain);
    }

    #[test]
    fn schedule_ends_are_validated_and_defaults_are_not_written() {
        for (cfg, key) in [
            (
                KdConfig {
                    alpha_end: Some(1.5),
                    ..KdConfig::default()
                },
                "alpha_end",
            ),
            (
                KdConfig {
                    temperature_end: Some(0.0),
                    ..KdConfig::default()
                },
                "temperature_end",
            ),
        ] {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        // Configurations without a schedule serialise as before (readers that know only
        // temperature and alpha, such as bench/torch_recipe.py, still accept them).
        let text = serde_json::to_string(&KdConfig::default()).unwrap();
        assert_eq!(text, r#"{"temperature":2.0,"alpha":0.5}"#);
    }
}
