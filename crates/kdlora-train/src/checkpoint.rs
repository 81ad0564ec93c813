//! The loop engine's checkpoints (`checkpoints/step-N/`): the model, both AdamW states and the
//! position, written atomically; only the newest is kept.
//!
//! Full fine-tuning saves the whole model record (`model.bin`, Burn's `BinFileRecorder`). LoRA
//! runs save only the trainable tensors (adapters and head, `trainable.safetensors`, with their
//! parameter ids in `trainable_ids.json` so the optimizer state keyed by them matches): the frozen
//! base is rebuilt from the model folder and the run's seed when resuming, exactly as it was
//! built when the run started, so the checkpoint needs none of it.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::record::{BinFileRecorder, FullPrecisionSettings};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kdlora_encoders::SequenceClassifier;
use kdlora_lora::AutodiffLoraOps;
use kdlora_lora::io::{HostTensor, read_safetensors, write_safetensors};

use crate::error::{Result, TrainError};
use crate::optim::GroupedAdamW;
use crate::record::{damaged, load_module};
use crate::run_dir::{
    CheckpointState, RunDir, create_dir, read_json, remove_dir_if_exists, replace_dir, write_json,
};

/// The trainable tensors of a LoRA checkpoint.
pub(crate) const TRAINABLE_FILE: &str = "trainable.safetensors";
/// Their parameter ids (module path -> id).
pub(crate) const TRAINABLE_IDS_FILE: &str = "trainable_ids.json";
/// The whole model record of a full fine-tuning checkpoint (`BinFileRecorder` adds `.bin`).
const MODEL_RECORD: &str = "model";

fn checkpoint_error(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Collects the trainable float parameters with their module paths.
struct Trainable {
    path: Vec<String>,
    tensors: Vec<HostTensor>,
    ids: BTreeMap<String, u64>,
    problems: Vec<String>,
}

impl<B: Backend> ModuleVisitor<B> for Trainable {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        let name = self.path.join(".");
        let shape = value.dims().to_vec();
        let values = match value.into_data().convert::<f32>().into_vec::<f32>() {
            Ok(v) => v,
            Err(e) => {
                self.problems.push(format!("reading {name}: {e:?}"));
                return;
            }
        };
        self.ids.insert(name.clone(), param.id.val());
        self.tensors.push(HostTensor {
            name,
            shape,
            values,
        });
    }
}

/// Puts saved tensors (and their ids) back into the trainable parameters of the same paths.
struct Restore<'a, B: Backend> {
    path: Vec<String>,
    tensors: BTreeMap<String, HostTensor>,
    ids: &'a BTreeMap<String, u64>,
    device: B::Device,
    problems: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Restore<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if !param.val().is_require_grad() {
            return param;
        }
        let name = self.path.join(".");
        let (Some(saved), Some(id)) = (self.tensors.remove(&name), self.ids.get(&name)) else {
            self.problems
                .push(format!("no tensor for trainable parameter {name}"));
            return param;
        };
        let expected = param.val().dims().to_vec();
        if saved.shape != expected {
            self.problems.push(format!(
                "{name} has shape {:?}, the model's is {expected:?}",
                saved.shape
            ));
            return param;
        }
        let tensor =
            Tensor::<B, D>::from_data(TensorData::new(saved.values, saved.shape), &self.device);
        // As Burn's record loading: the module's device, gradient setting and mappers, the
        // saved id (the optimizer state is keyed by it).
        param.transform_for_load(tensor, ParamId::from(*id))
    }
}

/// Writes `checkpoints/step-N/` for `state` and removes the older ones.
pub(crate) fn save_checkpoint<B: AutodiffLoraOps>(
    run: &RunDir,
    model: &SequenceClassifier<B>,
    optim: &GroupedAdamW<SequenceClassifier<B>, B>,
    state: &CheckpointState,
    trainable_only: bool,
) -> Result<()> {
    let root = run.checkpoints();
    create_dir(&root)?;
    let name = format!("step-{:08}", state.global_step);
    let target = root.join(&name);
    let staged = RunDir::temp_for(&target);
    remove_dir_if_exists(&staged)?;
    create_dir(&staged)?;
    if trainable_only {
        let mut collect = Trainable {
            path: Vec::new(),
            tensors: Vec::new(),
            ids: BTreeMap::new(),
            problems: Vec::new(),
        };
        model.visit(&mut collect);
        if !collect.problems.is_empty() {
            return Err(checkpoint_error(&staged, collect.problems.join("; ")));
        }
        write_safetensors(&staged.join(TRAINABLE_FILE), &collect.tensors)?;
        write_json(&staged.join(TRAINABLE_IDS_FILE), &collect.ids)?;
    } else {
        let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
        let model_path = staged.join(MODEL_RECORD);
        model
            .clone()
            .save_file(model_path.clone(), &recorder)
            .map_err(|e| checkpoint_error(&model_path, e.to_string()))?;
    }
    optim.save(&staged)?;
    write_json(&staged.join("state.json"), state)?;
    replace_dir(&staged, &target)?;
    // Only the newest checkpoint is kept: each holds the model and two optimizer moments.
    for entry in std::fs::read_dir(&root).map_err(|e| TrainError::io(&root, e))? {
        let entry = entry.map_err(|e| TrainError::io(&root, e))?;
        let fname = entry.file_name().to_string_lossy().to_string();
        if fname.starts_with("step-") && fname != name {
            remove_dir_if_exists(&entry.path())?;
        }
    }
    tracing::debug!(checkpoint = %target.display(), "checkpoint written");
    Ok(())
}

/// Loads the model part of checkpoint `dir` into `model`: the trainable tensors of a LoRA
/// checkpoint, or the whole record of a full one.
pub fn load_checkpoint_model<B: AutodiffLoraOps>(
    dir: &Path,
    model: SequenceClassifier<B>,
    device: &B::Device,
) -> Result<SequenceClassifier<B>> {
    let trainable = dir.join(TRAINABLE_FILE);
    if !trainable.is_file() {
        // Not Burn's `load_file`: its decoder panics or aborts on a damaged file.
        return load_module(model, &dir.join(MODEL_RECORD), device);
    }
    let tensors = read_safetensors(&trainable).map_err(|e| match e {
        kdlora_lora::LoraError::BadSafetensors { message, .. } => damaged(&trainable, message),
        // The reader's message names the file already.
        other => checkpoint_error(dir, other.to_string()),
    })?;
    let ids_path = dir.join(TRAINABLE_IDS_FILE);
    let ids: BTreeMap<String, u64> = read_json(&ids_path)?;
    let mut restore = Restore::<B> {
        path: Vec::new(),
        tensors: tensors.into_iter().map(|t| (t.name.clone(), t)).collect(),
        ids: &ids,
        device: device.clone(),
        problems: Vec::new(),
    };
    let model = model.map(&mut restore);
    let mut problems = restore.problems;
    problems.extend(
        restore
            .tensors
            .keys()
            .map(|name| format!("{name} is not a trainable parameter of this model")),
    );
    if !problems.is_empty() {
        return Err(damaged(
            &trainable,
            format!(
                "does not fit the model (checkpoint from another run?): {}",
                problems.join("; ")
            ),
        ));
    }
    Ok(model)
}
