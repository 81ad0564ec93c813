//! Small file helpers: atomic writes and f32 safetensors in and out.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::error::LoraError;

/// A named host tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Key in the file.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, converted to f32.
    pub values: Vec<f32>,
}

/// Writes `bytes` to `path` with [`kdlora_schema::write_atomic`]: readers never see a
/// half-written file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), LoraError> {
    kdlora_schema::write_atomic(path, bytes).map_err(|source| LoraError::Io {
        action: "writing",
        path: path.to_path_buf(),
        source,
    })
}

/// Reads every tensor of a safetensors file as f32 (f32, f16, bf16 and f64 files are accepted).
pub fn read_safetensors(path: &Path) -> Result<Vec<HostTensor>, LoraError> {
    let bytes = std::fs::read(path).map_err(|source| LoraError::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |message: String| LoraError::BadSafetensors {
        path: path.to_path_buf(),
        message,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.iter() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            other => {
                return Err(bad(format!(
                    "tensor {name} has dtype {other:?}; expected F32, F16, BF16 or F64"
                )));
            }
        };
        out.push(HostTensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            values,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes f32 tensors as safetensors with PyTorch's `{"format": "pt"}` metadata (transformers and
/// PEFT check it), atomically.
pub fn write_safetensors(path: &Path, tensors: &[HostTensor]) -> Result<(), LoraError> {
    let bad = |message: String| LoraError::BadSafetensors {
        path: path.to_path_buf(),
        message,
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (t, b) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, t.shape.clone(), b)
            .map_err(|e| bad(format!("tensor {}: {e}", t.name)))?;
        views.push((t.name.clone(), view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let buffer = safetensors::serialize(views, Some(metadata))
        .map_err(|e| bad(format!("serialising: {e}")))?;
    atomic_write(path, &buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_and_atomicity() {
        let dir = std::env::temp_dir().join(format!("kdlora-lora-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let tensors = vec![
            HostTensor {
                name: "a".into(),
                shape: vec![2, 3],
                values: vec![1.0, -2.0, 3.5, 0.0, 1e-7, 6.0],
            },
            HostTensor {
                name: "b".into(),
                shape: vec![1],
                values: vec![0.25],
            },
        ];
        write_safetensors(&path, &tensors).unwrap();
        assert_eq!(read_safetensors(&path).unwrap(), tensors);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // A shape that does not fit the values is an error, not a panic.
        let bad = vec![HostTensor {
            name: "c".into(),
            shape: vec![4],
            values: vec![1.0],
        }];
        assert!(write_safetensors(&path, &bad).is_err());
        std::fs::write(&path, b"garbage").unwrap();
        let err = read_safetensors(&path).unwrap_err().to_string();
        assert!(err.contains("t.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
