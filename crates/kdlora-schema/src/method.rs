//! [`Method`]: the training recipe a run used.

use serde::{Deserialize, Serialize};

/// Training recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Full fine-tuning: every parameter trains.
    Fft,
    /// LoRA adapters (and the task head) train; the base is frozen.
    Lora,
    /// LoRA student trained against a fine-tuned teacher's logits (the paper's method).
    KdLora,
    /// Full student trained against a fine-tuned teacher's logits (ablation, no LoRA).
    Kd,
}

/// A method name that is none of `fft`, `lora`, `kd-lora`, `kd`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown method `{0}` (expected fft, lora, kd-lora or kd)")]
pub struct UnknownMethod(pub String);

impl Method {
    /// Whether the run attaches LoRA adapters (and saves `adapter/` instead of `model/`).
    pub fn uses_lora(self) -> bool {
        matches!(self, Method::Lora | Method::KdLora)
    }

    /// Whether the run needs a teacher run folder.
    pub fn uses_teacher(self) -> bool {
        matches!(self, Method::KdLora | Method::Kd)
    }

    /// The name used in configuration files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Fft => "fft",
            Method::Lora => "lora",
            Method::KdLora => "kd-lora",
            Method::Kd => "kd",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Through [`FromStr`](std::str::FromStr): a bad name is reported as [`UnknownMethod`] (with the
/// valid names), not as serde's "does not have variant constructor".
impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, UnknownMethod> {
        match s {
            "fft" => Ok(Method::Fft),
            "lora" => Ok(Method::Lora),
            "kd-lora" | "kdlora" | "kd_lora" => Ok(Method::KdLora),
            "kd" => Ok(Method::Kd),
            other => Err(UnknownMethod(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for m in [Method::Fft, Method::Lora, Method::KdLora, Method::Kd] {
            assert_eq!(m.as_str().parse::<Method>().unwrap(), m);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
            assert_eq!(serde_json::from_str::<Method>(&json).unwrap(), m);
        }
        assert_eq!("kd_lora".parse::<Method>().unwrap(), Method::KdLora);
        let err = "qlora".parse::<Method>().unwrap_err();
        assert!(err.to_string().contains("`qlora`"), "{err}");
    }
}
