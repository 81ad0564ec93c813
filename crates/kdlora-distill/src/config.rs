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
}

impl Default for KdConfig {
    fn default() -> Self {
        Self {
            temperature: 2.0,
            alpha: 0.5,
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
        Ok(())
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
            }
            .validate()
            .unwrap_err();
            assert!(err.to_string().contains("temperature"), "{err}");
        }
        for a in [-0.01, 1.01, f64::NAN] {
            let err = KdConfig {
                temperature: 2.0,
                alpha: a,
            }
            .validate()
            .unwrap_err();
            assert!(err.to_string().contains("alpha"), "{err}");
        }
        for a in [0.0, 1.0] {
            KdConfig {
                temperature: 1.0,
                alpha: a,
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
                alpha: 0.25
            }
        );
        assert!(serde_json::from_str::<KdConfig>(r#"{"temp": 3.0}"#).is_err());
        let back: KdConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }
}
