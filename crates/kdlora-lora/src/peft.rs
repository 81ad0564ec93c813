//! PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors`, readable by
//! `PeftModel.from_pretrained` (PEFT 0.13) and written by it.
//!
//! Keys, as PEFT 0.13.2 saves a sequence-classification LoRA adapter:
//! `base_model.model.<module path>.lora_A.weight` (`[r, in]`), `...lora_B.weight` (`[out, r]`), and
//! for each module in `modules_to_save` its own tensors without wrapper names, e.g.
//! `base_model.model.classifier.weight` (`[out, in]`) and `base_model.model.classifier.bias`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};
use kdlora_kernels::LoraOps;
use serde::Deserialize;

use crate::config::{LoraConfig, LoraInit, TargetModules, module_covers};
use crate::error::{LoraError, sample};
use crate::inject::{EXAMPLES, linear_paths};
use crate::io::{HostTensor, atomic_write, read_safetensors, write_safetensors};
use crate::linear::{LoraAdapter, LoraLinear};
use crate::model::AdaptableModel;

/// File name of the adapter configuration.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// File name of the adapter weights.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix PEFT puts before every module path.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The fields of PEFT's `adapter_config.json` that kdlora reads. Unknown fields are ignored (PEFT
/// adds fields between versions); settings kdlora does not implement are rejected by
/// [`PeftAdapterConfig::check_supported`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PeftAdapterConfig {
    /// Must be `LORA`.
    pub peft_type: String,
    /// `SEQ_CLS` for kdlora's models.
    #[serde(default)]
    pub task_type: Option<String>,
    /// Base model the adapter was trained on (a hub id or folder).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Rank.
    pub r: usize,
    /// Scaling numerator.
    pub lora_alpha: f64,
    /// Adapter-input dropout.
    #[serde(default)]
    pub lora_dropout: f64,
    /// rsLoRA scaling.
    #[serde(default)]
    pub use_rslora: bool,
    /// Names or a regex.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// Modules trained in full.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// `true`, `false`, `"gaussian"`, ... (only informative when loading trained weights).
    #[serde(default)]
    pub init_lora_weights: serde_json::Value,
    /// Must be `none`.
    #[serde(default = "bias_none")]
    pub bias: String,
    /// Must be `false`.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Must be `false`.
    #[serde(default)]
    pub use_dora: bool,
    /// Must be empty (per-module ranks are not supported).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    /// Must be empty (per-module alphas are not supported).
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    /// Must be null.
    #[serde(default)]
    pub layers_to_transform: serde_json::Value,
}

fn bias_none() -> String {
    "none".to_string()
}

impl PeftAdapterConfig {
    /// Reads `dir/adapter_config.json`.
    pub fn read(dir: &Path) -> Result<Self, LoraError> {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        if !path.is_file() {
            return Err(LoraError::MissingAdapterConfig {
                dir: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| LoraError::Io {
            action: "reading",
            path: path.clone(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| LoraError::BadAdapterConfig {
            path: path.clone(),
            message: e.to_string(),
        })?;
        cfg.check_supported(&path)?;
        Ok(cfg)
    }

    /// Rejects PEFT settings whose semantics kdlora does not implement.
    pub fn check_supported(&self, path: &Path) -> Result<(), LoraError> {
        let unsupported = |key: &str, value: String, hint| {
            Err(LoraError::Unsupported {
                path: path.to_path_buf(),
                key: key.to_string(),
                value,
                hint,
            })
        };
        if self.peft_type != "LORA" {
            return unsupported("peft_type", self.peft_type.clone(), "only LORA adapters");
        }
        if self.bias != "none" {
            return unsupported("bias", self.bias.clone(), "only bias = \"none\"");
        }
        if self.fan_in_fan_out {
            return unsupported("fan_in_fan_out", "true".into(), "only nn.Linear targets");
        }
        if self.use_dora {
            return unsupported("use_dora", "true".into(), "plain LoRA only");
        }
        if !self.rank_pattern.is_empty() {
            return unsupported(
                "rank_pattern",
                format!("{:?}", self.rank_pattern),
                "one rank for all modules",
            );
        }
        if !self.alpha_pattern.is_empty() {
            return unsupported(
                "alpha_pattern",
                format!("{:?}", self.alpha_pattern),
                "one alpha for all modules",
            );
        }
        if !self.layers_to_transform.is_null() {
            return unsupported(
                "layers_to_transform",
                self.layers_to_transform.to_string(),
                "select layers with target_modules",
            );
        }
        if self.r == 0 {
            return Err(LoraError::BadAdapterConfig {
                path: path.to_path_buf(),
                message: "r = 0: the rank must be at least 1".into(),
            });
        }
        if self.task_type.as_deref().is_some_and(|t| t != "SEQ_CLS") {
            tracing::warn!(
                task_type = self.task_type.as_deref(),
                "adapter was not saved for sequence classification (SEQ_CLS)"
            );
        }
        Ok(())
    }

    /// The equivalent [`LoraConfig`] (head trained, default seed).
    pub fn to_lora_config(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            use_rslora: self.use_rslora,
            init: if self.init_lora_weights.as_str() == Some("gaussian") {
                LoraInit::Gaussian
            } else {
                LoraInit::KaimingUniform
            },
            target_modules: self.target_modules.clone(),
            modules_to_save: self.modules_to_save.clone(),
            ..LoraConfig::default()
        }
    }
}

/// Builds the `adapter_config.json` text PEFT 0.13.2 writes for this configuration.
fn adapter_config_json(
    cfg: &LoraConfig,
    targets: &TargetModules,
    modules_to_save: &[String],
    base_model_name_or_path: &str,
) -> String {
    // PEFT writes an integer alpha; keep that spelling when the value is integral.
    let alpha = if cfg.alpha.fract() == 0.0 && cfg.alpha.abs() < 1e15 {
        serde_json::json!(cfg.alpha as i64)
    } else {
        serde_json::json!(cfg.alpha)
    };
    let init = match cfg.init {
        LoraInit::KaimingUniform => serde_json::json!(true),
        LoraInit::Gaussian => serde_json::json!("gaussian"),
    };
    let value = serde_json::json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": init,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_dropout": cfg.dropout,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": modules_to_save,
        "peft_type": "LORA",
        "r": cfg.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "SEQ_CLS",
        "use_dora": false,
        "use_rslora": cfg.use_rslora,
    });
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// Burn `[in, out]` weight as PEFT/transformers `[out, in]` values.
fn linear_weight_hf<B: LoraOps>(linear: &LoraLinear<B>) -> Vec<f32> {
    to_vec(linear.base.weight.val().transpose())
}

fn to_vec<B: LoraOps, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

/// Writes `model`'s adapters and `modules_to_save` as a PEFT adapter folder `dir` (created if
/// needed): `adapter_config.json` and `adapter_model.safetensors` (f32), each written atomically.
///
/// Merged adapters are saved as they are (their `A` and `B`); `base_model_name_or_path` is
/// recorded for `PeftModel.from_pretrained`.
pub fn save_adapter<B, M>(
    model: &M,
    cfg: &LoraConfig,
    dir: &Path,
    base_model_name_or_path: &str,
) -> Result<(), LoraError>
where
    B: LoraOps,
    M: Module<B> + AdaptableModel<B>,
{
    let targets = cfg.targets_for(model.model_type())?;
    let save_names = cfg
        .modules_to_save
        .clone()
        .unwrap_or_else(|| model.head_module_paths());
    let mut tensors = Vec::new();
    model.visit_linears(&mut |path, linear| {
        if let Some(adapter) = &linear.adapter {
            tensors.push(HostTensor {
                name: format!("{PEFT_PREFIX}{path}.lora_A.weight"),
                shape: vec![adapter.rank(), adapter.d_input()],
                values: to_vec(adapter.lora_a.val()),
            });
            tensors.push(HostTensor {
                name: format!("{PEFT_PREFIX}{path}.lora_B.weight"),
                shape: vec![adapter.d_output(), adapter.rank()],
                values: to_vec(adapter.lora_b.val()),
            });
        } else if save_names.iter().any(|n| module_covers(n, path)) {
            tensors.push(HostTensor {
                name: format!("{PEFT_PREFIX}{path}.weight"),
                shape: vec![linear.d_output(), linear.d_input()],
                values: linear_weight_hf(linear),
            });
            if let Some(bias) = &linear.base.bias {
                tensors.push(HostTensor {
                    name: format!("{PEFT_PREFIX}{path}.bias"),
                    shape: vec![linear.d_output()],
                    values: to_vec(bias.val()),
                });
            }
        }
    });
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    std::fs::create_dir_all(dir).map_err(|source| LoraError::Io {
        action: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    write_safetensors(&dir.join(ADAPTER_WEIGHTS_FILE), &tensors)?;
    let json = adapter_config_json(cfg, &targets, &save_names, base_model_name_or_path);
    atomic_write(&dir.join(ADAPTER_CONFIG_FILE), json.as_bytes())?;
    tracing::info!(dir = %dir.display(), tensors = tensors.len(), "adapter saved");
    Ok(())
}

/// What one module receives from an adapter file.
#[derive(Default)]
struct ModuleTensors {
    lora_a: Option<HostTensor>,
    lora_b: Option<HostTensor>,
    weight: Option<HostTensor>,
    bias: Option<HostTensor>,
}

/// Loads a PEFT adapter folder onto `model`: freezes the model, attaches the adapters, replaces the
/// `modules_to_save` weights and makes them trainable. Returns the model and the adapter's
/// configuration as a [`LoraConfig`].
///
/// Everything is checked before the model is touched: a missing `adapter_config.json`, tensors for
/// modules the model does not have (an adapter for another architecture), ranks that disagree with
/// `r`, and shapes that do not fit are errors naming the file and key.
pub fn load_adapter<B, M>(
    model: M,
    dir: &Path,
    device: &B::Device,
) -> Result<(M, LoraConfig), LoraError>
where
    B: LoraOps,
    M: Module<B> + AdaptableModel<B>,
{
    let peft = PeftAdapterConfig::read(dir)?;
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    if !weights_path.is_file() {
        return Err(LoraError::MissingAdapterWeights {
            dir: dir.to_path_buf(),
            has_bin: dir.join("adapter_model.bin").is_file(),
        });
    }
    let tensors = read_safetensors(&weights_path)?;
    let modules = group_by_module(&weights_path, tensors)?;

    let mut shapes: BTreeMap<String, (usize, usize, bool)> = BTreeMap::new();
    let mut adapted = Vec::new();
    model.visit_linears(&mut |path, linear| {
        shapes.insert(
            path.to_string(),
            (
                linear.d_input(),
                linear.d_output(),
                linear.base.bias.is_some(),
            ),
        );
        if linear.adapter.is_some() {
            adapted.push(path.to_string());
        }
    });
    if let Some(path) = adapted.into_iter().next() {
        return Err(LoraError::AlreadyAdapted { path });
    }
    let unknown: Vec<String> = modules
        .keys()
        .filter(|p| !shapes.contains_key(*p))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(LoraError::ArchitectureMismatch {
            path: weights_path,
            model_type: model.model_type().to_string(),
            adapter_base: peft
                .base_model_name_or_path
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown".into()),
            count: unknown.len(),
            missing: sample(&unknown, EXAMPLES).into(),
            examples: sample(&linear_paths(&model), EXAMPLES).into(),
        });
    }
    for (path, t) in &modules {
        let (d_in, d_out, has_bias) = shapes[path];
        check_module(&weights_path, peft.r, path, t, d_in, d_out, has_bias)?;
    }
    check_targets(&model, &peft, dir, &modules)?;

    let cfg = peft.to_lora_config();
    let scaling = cfg.scaling();
    let mut model = model.no_grad();
    let mut modules = modules;
    model.visit_linears_mut(&mut |path, linear| {
        let Some(t) = modules.remove(path) else {
            return;
        };
        if let (Some(a), Some(b)) = (t.lora_a, t.lora_b) {
            let a = host_to_tensor::<B, 2>(a, device);
            let b = host_to_tensor::<B, 2>(b, device);
            linear.adapter = Some(LoraAdapter::new(a, b, cfg.dropout, scaling));
        }
        if let Some(w) = t.weight {
            let w = host_to_tensor::<B, 2>(w, device).transpose();
            linear.base.weight = Param::initialized(linear.base.weight.id, w);
            if let (Some(bias), Some(param)) = (t.bias, linear.base.bias.as_mut()) {
                *param = Param::initialized(param.id, host_to_tensor::<B, 1>(bias, device));
            }
            linear.set_base_trainable(cfg.train_head);
        }
    });
    tracing::info!(dir = %dir.display(), r = cfg.r, scaling, "adapter loaded");
    Ok((model, cfg))
}

/// Checks `target_modules` against the model and the tensors: every target must name a module of
/// the model (PEFT refuses the adapter otherwise), and the modules it names must be exactly those
/// with LoRA tensors. PEFT only warns ("missing adapter keys") when targeted modules have no
/// tensors and leaves them unadapted; that silently yields a different model (an adapter from a
/// 3-layer model on a 6-layer one), so it is an error here.
fn check_targets<B, M>(
    model: &M,
    peft: &PeftAdapterConfig,
    dir: &Path,
    modules: &BTreeMap<String, ModuleTensors>,
) -> Result<(), LoraError>
where
    B: LoraOps,
    M: AdaptableModel<B>,
{
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let mismatch = |path: &Path, message: String| LoraError::TargetMismatch {
        path: path.to_path_buf(),
        message,
    };
    let base = peft
        .base_model_name_or_path
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown");
    let mut cfg = peft.to_lora_config();
    // PEFT lists `score` for every SEQ_CLS adapter; entries no module has are not worth the
    // warning `plan` gives for them.
    let paths = linear_paths(model);
    if let Some(names) = cfg.modules_to_save.as_mut() {
        names.retain(|n| paths.iter().any(|p| module_covers(n, p)));
    }
    if cfg.modules_to_save.as_ref().is_some_and(Vec::is_empty) {
        cfg.modules_to_save = None;
    }
    let plan = crate::inject::plan(model, &cfg).map_err(|e| match e {
        LoraError::TargetNotFound {
            target,
            model_type,
            count,
            examples,
        } => mismatch(
            &config_path,
            format!(
                "target_modules entry {target:?} matches no linear module of this {model_type} \
                 model ({count} linear modules, e.g. {examples}); the adapter was made for \
                 another model (its base: {base})"
            ),
        ),
        other => other,
    })?;
    let adapted: BTreeSet<&str> = modules
        .iter()
        .filter(|(_, t)| t.lora_a.is_some())
        .map(|(p, _)| p.as_str())
        .collect();
    let targeted: BTreeSet<&str> = plan.targets.iter().map(String::as_str).collect();
    let untargeted: Vec<String> = adapted
        .difference(&targeted)
        .map(|p| p.to_string())
        .collect();
    if !untargeted.is_empty() {
        return Err(mismatch(
            &weights_path,
            format!(
                "LoRA tensors for {} module(s) that target_modules in {} does not name, e.g. {}",
                untargeted.len(),
                config_path.display(),
                sample(&untargeted, EXAMPLES)
            ),
        ));
    }
    let bare: Vec<String> = targeted
        .difference(&adapted)
        .map(|p| p.to_string())
        .collect();
    if !bare.is_empty() {
        return Err(mismatch(
            &weights_path,
            format!(
                "{} of the {} module(s) that target_modules names in this model have no LoRA \
                 tensors, e.g. {}: the adapter was trained on a model with fewer layers or other \
                 modules (its base: {base}) and would leave them unadapted",
                bare.len(),
                targeted.len(),
                sample(&bare, EXAMPLES)
            ),
        ));
    }
    Ok(())
}

fn host_to_tensor<B: LoraOps, const D: usize>(t: HostTensor, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(t.values, t.shape), device)
}

/// Sorts the file's keys into per-module groups; unknown key shapes are errors.
fn group_by_module(
    path: &Path,
    tensors: Vec<HostTensor>,
) -> Result<BTreeMap<String, ModuleTensors>, LoraError> {
    let unexpected = |key: &str, reason: &str| LoraError::UnexpectedKey {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.to_string(),
    };
    let mut modules: BTreeMap<String, ModuleTensors> = BTreeMap::new();
    for t in tensors {
        let Some(rest) = t.name.strip_prefix(PEFT_PREFIX) else {
            return Err(unexpected(
                &t.name,
                "PEFT keys start with base_model.model.",
            ));
        };
        let (module, slot) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else if rest.contains(".lora_") {
            return Err(unexpected(
                &t.name,
                "only lora_A/lora_B of linear layers are supported",
            ));
        } else if let Some(m) = rest.strip_suffix(".weight") {
            (m, 2)
        } else if let Some(m) = rest.strip_suffix(".bias") {
            (m, 3)
        } else {
            return Err(unexpected(
                &t.name,
                "neither a LoRA nor a weight/bias tensor",
            ));
        };
        let entry = modules.entry(module.to_string()).or_default();
        let place = match slot {
            0 => &mut entry.lora_a,
            1 => &mut entry.lora_b,
            2 => &mut entry.weight,
            _ => &mut entry.bias,
        };
        *place = Some(t);
    }
    Ok(modules)
}

/// Checks one module's tensors against the model's linear at `module`.
fn check_module(
    path: &Path,
    r: usize,
    module: &str,
    t: &ModuleTensors,
    d_in: usize,
    d_out: usize,
    has_bias: bool,
) -> Result<(), LoraError> {
    let shape_err = |key: &HostTensor, expected: Vec<usize>| LoraError::ShapeMismatch {
        path: path.to_path_buf(),
        key: key.name.clone(),
        expected,
        found: key.shape.clone(),
    };
    let rank_err = |key: &HostTensor, found| LoraError::RankMismatch {
        path: path.to_path_buf(),
        key: key.name.clone(),
        expected: r,
        found,
    };
    match (&t.lora_a, &t.lora_b) {
        (Some(a), Some(b)) => {
            if a.shape.len() != 2 {
                return Err(shape_err(a, vec![r, d_in]));
            }
            if b.shape.len() != 2 {
                return Err(shape_err(b, vec![d_out, r]));
            }
            if a.shape[0] != r {
                return Err(rank_err(a, a.shape[0]));
            }
            if b.shape[1] != r {
                return Err(rank_err(b, b.shape[1]));
            }
            if a.shape[1] != d_in {
                return Err(shape_err(a, vec![r, d_in]));
            }
            if b.shape[0] != d_out {
                return Err(shape_err(b, vec![d_out, r]));
            }
        }
        (Some(_), None) => {
            return Err(LoraError::IncompletePair {
                path: path.to_path_buf(),
                module: module.to_string(),
                present: "lora_A.weight",
                absent: "lora_B.weight",
            });
        }
        (None, Some(_)) => {
            return Err(LoraError::IncompletePair {
                path: path.to_path_buf(),
                module: module.to_string(),
                present: "lora_B.weight",
                absent: "lora_A.weight",
            });
        }
        (None, None) => {}
    }
    if t.lora_a.is_some() && (t.weight.is_some() || t.bias.is_some()) {
        let key = t
            .weight
            .as_ref()
            .or(t.bias.as_ref())
            .map(|k| k.name.clone());
        return Err(LoraError::UnexpectedKey {
            path: path.to_path_buf(),
            key: key.unwrap_or_default(),
            reason: "a module cannot be both adapted and in modules_to_save".into(),
        });
    }
    if let Some(w) = &t.weight
        && w.shape != [d_out, d_in]
    {
        return Err(shape_err(w, vec![d_out, d_in]));
    }
    match &t.bias {
        Some(b) if !has_bias => Err(LoraError::UnexpectedKey {
            path: path.to_path_buf(),
            key: b.name.clone(),
            reason: format!("{module} has no bias"),
        }),
        Some(b) if b.shape != [d_out] => Err(shape_err(b, vec![d_out])),
        Some(b) if t.weight.is_none() => Err(LoraError::UnexpectedKey {
            path: path.to_path_buf(),
            key: b.name.clone(),
            reason: "bias without weight".into(),
        }),
        _ => Ok(()),
    }
}

/// Module paths an adapter folder touches (adapted and saved), e.g. for reports.
pub fn adapter_modules(dir: &Path) -> Result<BTreeSet<String>, LoraError> {
    let path: PathBuf = dir.join(ADAPTER_WEIGHTS_FILE);
    Ok(group_by_module(&path, read_safetensors(&path)?)?
        .into_keys()
        .collect())
}
