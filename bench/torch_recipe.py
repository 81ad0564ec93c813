#!/usr/bin/env python3
"""kdlora's training recipes in PyTorch + transformers + PEFT, for a cell-by-cell comparison.

    python bench/torch_recipe.py --config RUN_DIR/config.toml --out OUT_DIR \
        [--teacher TORCH_FFT_OUT_DIR] [--threads N]
    python bench/torch_recipe.py --self-test

Reads the `config.toml` that kdlora writes into a run folder (or any run configuration in that
format: `RunConfig` in crates/kdlora-train/src/config.rs, `[lora]` = `kdlora_lora::LoraConfig`,
`[kd]` = `kdlora_distill::KdConfig`), trains the same recipe with PyTorch and writes
`OUT_DIR/metrics.json` (schema `kdlora-torch-recipe/1`, written atomically), plus `OUT_DIR/model/`
(transformers `save_pretrained` and the model's tokenizer files) for `fft` and `kd` so that the
folder can be the `--teacher` of a `kd-lora` run, or `OUT_DIR/adapter/` (PEFT) for `lora`/`kd-lora`.

Methods: `fft` (every parameter trains), `lora` (LoRA adapters on the configured targets, head
modules trained in full through PEFT's `modules_to_save`), `kd-lora` (the LoRA student trained
against the teacher's logits, looked up by example index) and `kd` (full student against the
teacher). The teacher of `kd-lora`/`kd` is `--teacher OUT_DIR/model/` of the PyTorch FFT run of the
same task; its logits on the training rows are computed once, in eval mode (no dropout), with the
teacher's own tokenizer at the run's `max_len`, and row `i` of that table is the teacher output of
training example `i` (the `i`-th selected row of the training file).

What is the same as kdlora (source of each rule in brackets):
- Data [kdlora-glue/src/data.rs, task.rs; kdlora-train/src/data.rs]: the same file search order
  (`<data>/<GLUE dir>/<split>.tsv`, `<data>/<task>/<hf split>.jsonl`, then both directly in
  `<data>`), MNLI's matched dev as `dev_matched.tsv` / `validation_matched.jsonl` /
  `validation.jsonl`; strict line splitting (UTF-8 BOM dropped, CRLF accepted, one example per
  line, no quoting), CoLA's header-less train/dev (label column 1, sentence column 3), columns by
  header name otherwise, string labels for MNLI/QNLI/RTE, 0/1 for the others, STS-B scores as f32
  in [0, 5]; JSONL columns per task with `label` -1 meaning "no label"; the whole file is parsed
  and then the first `max_train_examples` / `max_eval_examples` rows are kept. Label order is
  kdlora's task catalogue (= HF `glue`).
- Tokenization [kdlora-glue/src/tokenize.rs, batch.rs]: the model folder's `tokenizer.json`
  (Hugging Face `tokenizers`), special tokens added, pairs as pairs, longest-first truncation to
  `max_len`, no padding at encode time, batches padded to their longest row with the tokenizer's
  pad id / pad type id (else `[PAD]`/`<pad>`, type 0), attention mask 1/0.
- Model [kdlora-encoders/src/classifier.rs, weights.rs]: `AutoModelForSequenceClassification`
  from the model folder in fp32 (fp16/bf16 checkpoints are upcast), `num_labels` from the task (1 =
  STS-B regression); a head (and BERT pooler) the checkpoint lacks is initialised by
  transformers' `_init_weights`: normal(0, `initializer_range`) weights, zero bias, as kdlora
  does. Dropout probabilities from `config.json` (hidden, attention, classifier =
  `classifier_dropout` falling back to `hidden_dropout_prob`); inverted dropout; eval without
  dropout. Attention runs the "eager" implementation (kdlora's formula).
- LoRA [kdlora-lora/src/config.rs, inject.rs, init.rs, linear.rs]: PEFT `LoraConfig` with the
  same `r`, `lora_alpha`, `lora_dropout` (on the adapter input only), scaling `alpha / r` (or
  `alpha / sqrt(r)` with `use_rslora`), `A` Kaiming-uniform(a = sqrt 5) or N(0, 1/r^2) for
  `init = "gaussian"`, `B` = 0, bias "none"; targets as configured, else kdlora's per-architecture
  defaults (`query`,`value` / `q_lin`,`v_lin` / `query_proj`,`value_proj`), a name matching a
  module path equal to it or ending in `.name`, a string being a full-match regex; each target
  entry must match a linear module; `modules_to_save` as configured, else the model's head
  (`classifier`; DistilBERT `pre_classifier`,`classifier`; DeBERTa `pooler`,`classifier`), trained
  only with `train_head = true`. Configurations where PEFT's `modules_to_save` rule would train a
  different set of tensors than kdlora's (which covers linear modules only), or where a target lies
  inside a saved module (kdlora leaves it unadapted), are refused.
- Loss [kdlora-distill/src/loss.rs, kdlora-train/src/runner.rs `micro_batch_loss`]: mean
  cross-entropy; STS-B mean squared error of the single output; KD:
  `alpha * CE + (1 - alpha) * T^2 * mean_batch(sum_c p_t (log p_t - log p_s))` with both
  distributions at temperature T (KL summed over classes, averaged over the batch, i.e.
  "batchmean"), the teacher detached; STS-B KD: `alpha * MSE(s, y) + (1 - alpha) * MSE(s, t)`
  (no temperature, no T^2).
- Optimizer [kdlora-train/src/optim.rs]: AdamW, betas (0.9, 0.999), eps 1e-8 added to
  sqrt(v_hat), bias-corrected moments, decoupled decay `p *= 1 - lr * wd`; weight decay on every
  trainable tensor except biases (parameter name `bias`) and LayerNorm weights and biases (the
  tensors of `nn.LayerNorm` modules): embeddings, LoRA A and B, pooler and classifier weights
  decay. Global L2 gradient-norm clipping over all trainable tensors at `grad_clip` (coefficient
  `clip / (norm + 1e-6)` when the norm exceeds it; 0 disables); a non-finite loss or gradient
  norm stops the run.
- Schedule [optim.rs `linear_schedule`, runner.rs `total_steps`, `warmup_steps`]: optimizer steps
  per epoch = ceil(ceil(rows / batch_size) / grad_accumulation) (a trailing partial batch and a
  trailing partial accumulation group are steps of their own), total = that x `epochs`, warm-up
  steps = ceil(warmup_ratio x total); the lr of step k (0-based, taken before the step counter
  is incremented) is `lr * k / warmup` during warm-up, then `lr * (total - k) / (total - warmup)`
  (so the first step of a warm-up run has lr 0, the first step of a run without warm-up the full
  lr; = transformers' `get_linear_schedule_with_warmup`).
- Gradient accumulation [runner.rs `group_gradients`]: each micro-batch's loss / group size is
  back-propagated, one optimizer step per group.
- Epochs: the training rows are shuffled once per epoch and cut into `batch_size` chunks in
  that order (the last one shorter); with `group_by_length`, each window of 50 batches of that
  order is first sorted by token count, longest first [runner.rs `epoch_batches`]; dev is evaluated after every epoch with `eval_batch_size`
  batches in file order, predictions = argmax (first maximum on ties) or the single output for
  STS-B. `train_loss` is the mean of the epoch's micro-batch losses; `step` the optimizer steps
  done by the end of the epoch; `last` is the last epoch, `best` the highest score (on ties the
  later epoch, as Rust's `max_by`).
- Metrics [kdlora-glue/src/metrics.rs], x100: CoLA Matthews correlation (multi-class form, 0 when
  undefined); STS-B mean of Pearson and Spearman (average ranks for ties; 0 for a constant input;
  predictions and labels as f32 widened to f64); MRPC/QQP mean of accuracy and F1 of class 1 (0
  for 0/0); others accuracy. `score_mismatched`: MNLI only, when a mismatched dev file exists
  (`dev_mismatched.tsv` or `validation_mismatched.jsonl`), its first `max_eval_examples` rows.
- Seeds: `seed` seeds torch before the model is loaded (fresh head), `lora.seed` before the
  adapters are attached; the epoch order is `torch.randperm` with a generator seeded by
  kdlora's `mix_seed(seed, 1, epoch)`, and the global torch RNG is reseeded with
  `mix_seed(seed, 2, step)` before every optimizer step (dropout masks a function of (seed,
  step), as kdlora does with its backend RNG).
- Paths: `${NAME}` in `model`, `data` is expanded from the environment, `KDLORA_SHARED`
  defaulting to `../shared` as in kdlora (`RunConfig::expand_vars`); any other unset variable is
  an error.

What cannot be identical (so numbers agree only statistically, not bit for bit):
- Random streams: kdlora draws the shuffling order with Rust's `StdRng` (ChaCha) `shuffle`, the
  head and a missing pooler from its own seeded normal sampler, LoRA `A` from SplitMix64 streams
  per module path, and dropout masks from the Burn backend's RNG. This script uses torch's
  generators for all four: same distributions, same seeds as inputs, different draws. Hence a
  different example order every epoch, a different fresh head, different `A`, different masks.
- Floating point: different kernels (Burn's Flex/ndarray matmul, softmax and GELU vs PyTorch's
  oneDNN/MKL), summation orders and the attention mask constant (-1e9 vs the dtype minimum); f32
  everywhere on both sides. Differences grow over training but do not change the recipe.
- Tokenizer library: the Python `tokenizers` package that transformers 4.46.3 pins (0.20.x)
  vs the Rust crate kdlora links (0.22); same `tokenizer.json`, same algorithm.
- Not reproduced because they do not change the numbers: checkpoints (`checkpoint_steps`),
  resuming, the inference-time and memory measurements (`inference_passes`), `engine` (both
  kdlora engines run the same recipe), `device` (this script runs on the CPU).
- Refused (exit 2) rather than approximated: unknown keys, `stop_after_epochs`, a Hub id as the
  model, values kdlora itself rejects, and `modules_to_save`/target combinations where PEFT and
  kdlora would train different tensors (see LoRA above).
"""

import argparse
import json
import math
import os
import platform
import re
import shutil
import sys
import time

SCHEMA = "kdlora-torch-recipe/1"

# --------------------------------------------------------------------------------------------
# Task catalogue (crates/kdlora-glue/src/task.rs)
# --------------------------------------------------------------------------------------------

TASKS = {
    "cola": dict(dir="CoLA", fields=["sentence"], tsv=["sentence"], label="label",
                 names=["unacceptable", "acceptable"], strings=False, metrics=["mcc"]),
    "sst2": dict(dir="SST-2", fields=["sentence"], tsv=["sentence"], label="label",
                 names=["negative", "positive"], strings=False, metrics=["accuracy"]),
    "mrpc": dict(dir="MRPC", fields=["sentence1", "sentence2"], tsv=["#1 String", "#2 String"],
                 label="Quality", names=["not_equivalent", "equivalent"], strings=False,
                 metrics=["accuracy", "f1"]),
    "stsb": dict(dir="STS-B", fields=["sentence1", "sentence2"], tsv=["sentence1", "sentence2"],
                 label="score", names=[], strings=False, metrics=["pearson", "spearman"]),
    "qqp": dict(dir="QQP", fields=["question1", "question2"], tsv=["question1", "question2"],
                label="is_duplicate", names=["not_duplicate", "duplicate"], strings=False,
                metrics=["accuracy", "f1"]),
    "mnli": dict(dir="MNLI", fields=["premise", "hypothesis"], tsv=["sentence1", "sentence2"],
                 label="gold_label", names=["entailment", "neutral", "contradiction"],
                 strings=True, metrics=["accuracy"]),
    "qnli": dict(dir="QNLI", fields=["question", "sentence"], tsv=["question", "sentence"],
                 label="label", names=["entailment", "not_entailment"], strings=True,
                 metrics=["accuracy"]),
    "rte": dict(dir="RTE", fields=["sentence1", "sentence2"], tsv=["sentence1", "sentence2"],
                label="label", names=["entailment", "not_entailment"], strings=True,
                metrics=["accuracy"]),
    "wnli": dict(dir="WNLI", fields=["sentence1", "sentence2"], tsv=["sentence1", "sentence2"],
                 label="label", names=["not_entailment", "entailment"], strings=False,
                 metrics=["accuracy"]),
}


def parse_task(name):
    """GlueTask::from_str: case-insensitive, `-` and `_` ignored (`SST-2`, `sts_b`)."""
    key = "".join(c for c in str(name).strip() if c not in "-_").lower()
    if key in TASKS:
        return key
    if key in ("ax", "diagnostic"):
        raise ConfigError("task `ax` has no training split; nothing to train")
    raise ConfigError(f"`task`: unknown GLUE task `{name}` (expected one of {', '.join(TASKS)})")


def num_labels(task):
    return 1 if task == "stsb" else len(TASKS[task]["names"])


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ConfigError(Exception):
    """A configuration this script refuses (exit code 2)."""


class DataError(Exception):
    """A data file kdlora's strict readers would reject (exit code 1)."""


# --------------------------------------------------------------------------------------------
# Run configuration (crates/kdlora-train/src/config.rs and the [lora] / [kd] sections)
# --------------------------------------------------------------------------------------------

TOP_DEFAULTS = {
    "method": None, "task": None, "model": None, "data": None, "out": None, "teacher": None,
    "device": "cpu", "epochs": 3, "batch_size": 32, "grad_accumulation": 1, "lr": 2e-5,
    "weight_decay": 0.01, "warmup_ratio": 0.0, "grad_clip": 1.0, "max_len": 128, "seed": 42,
    "max_train_examples": None, "max_eval_examples": None, "eval_batch_size": 64,
    "checkpoint_steps": 0, "inference_passes": 3, "stop_after_epochs": None, "engine": "loop",
    "group_by_length": False, "lora": None, "kd": None,
}
# Batches per window of `group_by_length` (runner.rs LENGTH_WINDOW_BATCHES, as the Hugging Face
# Trainer's LengthGroupedSampler).
LENGTH_WINDOW_BATCHES = 50
REQUIRED = ("method", "task", "model", "data", "out")
LORA_DEFAULTS = {
    "r": 8, "alpha": 16.0, "dropout": 0.05, "use_rslora": False, "init": "kaiming_uniform",
    "target_modules": None, "modules_to_save": None, "train_head": True, "seed": 42,
}
KD_DEFAULTS = {"temperature": 2.0, "alpha": 0.5}
METHODS = {"fft": "fft", "lora": "lora", "kd-lora": "kd-lora", "kdlora": "kd-lora",
           "kd_lora": "kd-lora", "kd": "kd"}
DEFAULT_TARGETS = {
    "bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"], "deberta-v2": ["query_proj", "value_proj"],
}
HEAD_MODULES = {
    "bert": ["classifier"], "roberta": ["classifier"], "xlm-roberta": ["classifier"],
    "distilbert": ["pre_classifier", "classifier"], "deberta-v2": ["pooler", "classifier"],
}


def _int(key, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"`{key}`: expected a non-negative integer, got {v!r}")
    return v


def _float(key, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"`{key}`: expected a number, got {v!r}")
    return float(v)


def _bool(key, v):
    if not isinstance(v, bool):
        raise ConfigError(f"`{key}`: expected true or false, got {v!r}")
    return v


def _str(key, v):
    if not isinstance(v, str):
        raise ConfigError(f"`{key}`: expected a string, got {v!r}")
    return v


def expand_vars(key, s):
    """`${NAME}` from the environment; KDLORA_SHARED defaults to ../shared (kdlora's rule)."""
    out, rest = [], s
    while "${" in rest:
        start = rest.index("${")
        out.append(rest[:start])
        after = rest[start + 2:]
        if "}" not in after:
            raise ConfigError(f"`{key}`: unterminated `${{` in `{s}`")
        name = after[: after.index("}")]
        value = os.environ.get(name)
        if value is None:
            if name == "KDLORA_SHARED":
                value = "../shared"
            else:
                raise ConfigError(f"`{key}`: environment variable `{name}` is not set (in `{s}`)")
        out.append(value)
        rest = after[after.index("}") + 1:]
    out.append(rest)
    return "".join(out)


def load_config(path):
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}")
    unknown = sorted(set(raw) - set(TOP_DEFAULTS))
    if unknown:
        raise ConfigError(f"{path}: unknown or unsupported key(s) {', '.join(unknown)} "
                          "(kdlora's RunConfig denies unknown fields; torch_recipe.py implements "
                          f"only {', '.join(TOP_DEFAULTS)})")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"{path}: missing key(s) {', '.join(missing)}")
    cfg = dict(TOP_DEFAULTS)
    cfg.update(raw)

    method = _str("method", cfg["method"])
    if method not in METHODS:
        raise ConfigError(f"`method`: unknown method `{method}` (expected fft, lora, kd-lora or kd)")
    cfg["method"] = METHODS[method]
    cfg["task"] = parse_task(_str("task", cfg["task"]))
    for key in ("model", "data", "out"):
        cfg[key] = _str(key, cfg[key])
    cfg["model"] = expand_vars("model", cfg["model"])
    cfg["data"] = expand_vars("data", cfg["data"])
    _str("device", cfg["device"])
    cfg["group_by_length"] = _bool("group_by_length", cfg["group_by_length"])
    engine = _str("engine", cfg["engine"])
    if engine not in ("loop", "learner"):
        raise ConfigError(f"`engine`: unknown engine `{engine}` (expected \"loop\" or \"learner\")")
    for key in ("epochs", "batch_size", "grad_accumulation", "max_len", "seed", "eval_batch_size",
                "checkpoint_steps", "inference_passes"):
        cfg[key] = _int(key, cfg[key])
    for key in ("epochs", "batch_size", "grad_accumulation", "max_len", "eval_batch_size"):
        if cfg[key] == 0:
            raise ConfigError(f"`{key}`: must be at least 1")
    for key in ("lr", "weight_decay", "warmup_ratio", "grad_clip"):
        cfg[key] = _float(key, cfg[key])
    if not (math.isfinite(cfg["lr"]) and cfg["lr"] > 0):
        raise ConfigError(f"`lr`: {cfg['lr']} is not a positive number")
    if not (math.isfinite(cfg["weight_decay"]) and cfg["weight_decay"] >= 0):
        raise ConfigError("`weight_decay`: must be >= 0")
    if not (0.0 <= cfg["warmup_ratio"] < 1.0):
        raise ConfigError("`warmup_ratio`: must be in [0, 1)")
    if not (math.isfinite(cfg["grad_clip"]) and cfg["grad_clip"] >= 0):
        raise ConfigError("`grad_clip`: must be >= 0 (0 disables clipping)")
    for key in ("max_train_examples", "max_eval_examples"):
        if cfg[key] is not None and _int(key, cfg[key]) == 0:
            raise ConfigError(f"`{key}`: must be at least 1")
    if cfg["stop_after_epochs"] is not None:
        raise ConfigError("`stop_after_epochs` is not implemented by torch_recipe.py (it simulates "
                          "an interrupted kdlora run; remove it)")
    if cfg["teacher"] is not None:
        _str("teacher", cfg["teacher"])  # kdlora's teacher run; the torch teacher is --teacher

    lora = cfg["lora"] if cfg["lora"] is not None else {}
    if not isinstance(lora, dict):
        raise ConfigError("`lora`: expected a table")
    unknown = sorted(set(lora) - set(LORA_DEFAULTS))
    if unknown:
        raise ConfigError(f"`lora`: unknown or unsupported key(s) {', '.join(unknown)} "
                          f"(implemented: {', '.join(LORA_DEFAULTS)})")
    lora = {**LORA_DEFAULTS, **lora}
    lora["r"] = _int("lora.r", lora["r"])
    if lora["r"] == 0:
        raise ConfigError("`lora.r`: the rank must be at least 1")
    lora["alpha"] = _float("lora.alpha", lora["alpha"])
    if not math.isfinite(lora["alpha"]):
        raise ConfigError("`lora.alpha`: must be finite")
    lora["dropout"] = _float("lora.dropout", lora["dropout"])
    if not (0.0 <= lora["dropout"] < 1.0):
        raise ConfigError("`lora.dropout`: must be in [0, 1)")
    lora["use_rslora"] = _bool("lora.use_rslora", lora["use_rslora"])
    lora["train_head"] = _bool("lora.train_head", lora["train_head"])
    lora["seed"] = _int("lora.seed", lora["seed"])
    if lora["init"] not in ("kaiming_uniform", "gaussian"):
        raise ConfigError(f"`lora.init`: `{lora['init']}` (expected kaiming_uniform or gaussian)")
    tm = lora["target_modules"]
    if tm is not None:
        if isinstance(tm, str):
            try:
                re.compile(tm)
            except re.error as e:
                raise ConfigError(f"`lora.target_modules`: bad regex `{tm}`: {e}")
        elif isinstance(tm, list) and all(isinstance(t, str) for t in tm):
            if not tm:
                raise ConfigError("`lora.target_modules`: name at least one module (or leave it "
                                  "unset for the defaults)")
        else:
            raise ConfigError("`lora.target_modules`: expected a list of names or a regex string")
    mts = lora["modules_to_save"]
    if mts is not None and not (isinstance(mts, list) and all(isinstance(m, str) for m in mts)):
        raise ConfigError("`lora.modules_to_save`: expected a list of module names")
    cfg["lora"] = lora

    kd = cfg["kd"] if cfg["kd"] is not None else {}
    if not isinstance(kd, dict):
        raise ConfigError("`kd`: expected a table")
    unknown = sorted(set(kd) - set(KD_DEFAULTS))
    if unknown:
        raise ConfigError(f"`kd`: unknown or unsupported key(s) {', '.join(unknown)} "
                          "(implemented: temperature, alpha; hidden-state distillation is not)")
    kd = {**KD_DEFAULTS, **kd}
    kd["temperature"] = _float("kd.temperature", kd["temperature"])
    kd["alpha"] = _float("kd.alpha", kd["alpha"])
    if not (math.isfinite(kd["temperature"]) and kd["temperature"] > 0):
        raise ConfigError("`kd.temperature`: must be finite and > 0")
    if not (0.0 <= kd["alpha"] <= 1.0):
        raise ConfigError("`kd.alpha`: must lie in [0, 1]")
    cfg["kd"] = kd
    return cfg


# --------------------------------------------------------------------------------------------
# GLUE readers (crates/kdlora-glue/src/data.rs)
# --------------------------------------------------------------------------------------------


def file_candidates(data_dir, task, split):
    """`locate`: original TSV layout, HF JSONL layout, then both directly in `data_dir`."""
    spec = TASKS[task]
    tsv = {"train": "train.tsv", "dev": "dev_matched.tsv" if task == "mnli" else "dev.tsv",
           "dev_mismatched": "dev_mismatched.tsv"}[split]
    jsonl = {"train": ["train.jsonl"],
             "dev": ["validation_matched.jsonl", "validation.jsonl"] if task == "mnli"
             else ["validation.jsonl"],
             "dev_mismatched": ["validation_mismatched.jsonl"]}[split]
    out = [(os.path.join(data_dir, spec["dir"], tsv), "tsv")]
    out += [(os.path.join(data_dir, task, f), "jsonl") for f in jsonl]
    out.append((os.path.join(data_dir, tsv), "tsv"))
    out += [(os.path.join(data_dir, f), "jsonl") for f in jsonl]
    return out


def locate(data_dir, task, split, required=True):
    candidates = file_candidates(data_dir, task, split)
    for path, fmt in candidates:
        if os.path.isfile(path):
            return path, fmt
    if not required:
        return None, None
    raise DataError(f"no {split} data for {task} under {data_dir}; tried: "
                    + ", ".join(p for p, _ in candidates))


def split_lines(data):
    """`lines`: BOM dropped, `\\n` separated, trailing `\\r` removed, no phantom last line."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data:
        return []
    if data.endswith(b"\n"):
        data = data[:-1]
    return [(i + 1, line[:-1] if line.endswith(b"\r") else line)
            for i, line in enumerate(data.split(b"\n"))]


def _utf8(path, line_no, raw):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{line_no}: invalid UTF-8 at byte {e.start}")


def _score(value, where):
    import numpy as np

    try:
        score = float(np.float32(float(value.strip())))
    except ValueError:
        raise DataError(f"{where}: score `{value}` is not a number")
    if not (math.isfinite(score) and 0.0 <= score <= 5.0):
        raise DataError(f"{where}: score `{value}` is outside [0, 5]")
    return score


def _tsv_label(task, value, where):
    spec = TASKS[task]
    if value == "":
        raise DataError(f"{where}: missing label")
    if task == "stsb":
        return _score(value, where)
    names = spec["names"]
    if spec["strings"]:
        if value in names:
            return names.index(value)
    elif value.isascii() and value.isdigit() and (value == "0" or not value.startswith("0")):
        if int(value) < len(names):
            return int(value)
    valid = names if spec["strings"] else [str(i) for i in range(len(names))]
    raise DataError(f"{where}: unknown label `{value}` for {task} (valid: {', '.join(valid)})")


def parse_tsv(data, path, task, split):
    """`parse_tsv` for labelled splits: [(text_a, text_b or None, label)]."""
    spec = TASKS[task]
    lines = split_lines(data)
    if not lines:
        raise DataError(f"{path}: empty file")
    if task == "cola":
        width, text_cols, label_col, rows = 4, [3], 1, lines
    else:
        line_no, raw = lines[0]
        header = _utf8(path, line_no, raw)
        if not header:
            raise DataError(f"{path}:{line_no}: empty line")
        names = header.split("\t")

        def find(col):
            if col not in names:
                raise DataError(f"{path}:{line_no}: column `{col}` missing from header `{header}`")
            return names.index(col)

        width = len(names)
        text_cols = [find(c) for c in spec["tsv"]]
        label_col = find(spec["label"])
        rows = lines[1:]
    out = []
    for line_no, raw in rows:
        line = _utf8(path, line_no, raw)
        if not line:
            raise DataError(f"{path}:{line_no}: empty line")
        fields = line.split("\t")
        if len(fields) != width:
            raise DataError(f"{path}:{line_no}: expected {width} fields, found {len(fields)}")
        label = _tsv_label(task, fields[label_col], f"{path}:{line_no}")
        out.append((fields[text_cols[0]], fields[text_cols[1]] if len(text_cols) > 1 else None,
                    label))
    return out


def parse_jsonl(data, path, task, split):
    """`parse_jsonl` for labelled splits."""
    spec = TASKS[task]
    lines = split_lines(data)
    if not lines:
        raise DataError(f"{path}: empty file")
    out = []
    for line_no, raw in lines:
        where = f"{path}:{line_no}"
        line = _utf8(path, line_no, raw)
        if not line.strip():
            raise DataError(f"{where}: empty line")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: {e}")
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object")
        texts = []
        for field in spec["fields"]:
            if field not in obj:
                raise DataError(f"{where}: field `{field}` missing")
            if not isinstance(obj[field], str):
                raise DataError(f"{where}: field `{field}`: expected a string")
            texts.append(obj[field])
        idx = obj.get("idx")
        if "idx" in obj and (isinstance(idx, bool) or not isinstance(idx, int) or idx < 0):
            raise DataError(f"{where}: field `idx`: expected a non-negative integer")
        value = obj.get("label")
        label = None
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                      and value == -1):
            if task == "stsb":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise DataError(f"{where}: field `label`: expected a number")
                label = _score(str(value), where)
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise DataError(f"{where}: field `label`: expected an integer class id")
                if not 0 <= value < num_labels(task):
                    raise DataError(f"{where}: unknown label `{value}` for {task}")
                label = value
        if label is None:
            raise DataError(f"{where}: missing label")
        out.append((texts[0], texts[1] if len(texts) > 1 else None, label))
    return out


def load_split(data_dir, task, split, limit, required=True):
    """`SplitData::load`: the whole file parsed, then its first `limit` rows kept."""
    path, fmt = locate(data_dir, task, split, required)
    if path is None:
        return None
    with open(path, "rb") as f:
        data = f.read()
    rows = (parse_tsv if fmt == "tsv" else parse_jsonl)(data, path, task, split)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise DataError(f"{data_dir}: no {split} examples for {task}")
    return rows


# --------------------------------------------------------------------------------------------
# Tokenization and batching (crates/kdlora-glue/src/tokenize.rs, batch.rs)
# --------------------------------------------------------------------------------------------


class Tokenizer:
    def __init__(self, path, max_len):
        from tokenizers import Tokenizer as HfTokenizer

        if not os.path.isfile(path):
            raise DataError(f"{path}: tokenizer.json not found")
        tok = HfTokenizer.from_file(path)
        padding = tok.padding
        if padding is not None:
            self.pad_id, self.pad_type_id = padding["pad_id"], padding["pad_type_id"]
        else:
            ids = [tok.token_to_id(t) for t in ("[PAD]", "<pad>")]
            ids = [i for i in ids if i is not None]
            if not ids:
                raise DataError(f"{path}: tokenizer defines no padding and has no [PAD] or <pad>")
            self.pad_id, self.pad_type_id = ids[0], 0
        tok.no_padding()
        tok.enable_truncation(max_length=max_len, stride=0, strategy="longest_first",
                              direction="right")
        self.tok = tok

    def encode(self, rows):
        inputs = [(a, b) if b is not None else a for a, b, _ in rows]
        encs = self.tok.encode_batch(inputs, add_special_tokens=True)
        return [(list(e.ids), list(e.type_ids)) for e in encs]


def make_batch(torch, encoded, positions, pad_id, pad_type_id):
    rows = [encoded[p] for p in positions]
    seq = max(len(ids) for ids, _ in rows)
    n = len(rows)
    input_ids = torch.full((n, seq), pad_id, dtype=torch.long)
    token_type_ids = torch.full((n, seq), pad_type_id, dtype=torch.long)
    attention_mask = torch.zeros((n, seq), dtype=torch.long)
    for r, (ids, types) in enumerate(rows):
        k = len(ids)
        input_ids[r, :k] = torch.tensor(ids, dtype=torch.long)
        token_type_ids[r, :k] = torch.tensor(types, dtype=torch.long)
        attention_mask[r, :k] = 1
    return input_ids, attention_mask, token_type_ids


# --------------------------------------------------------------------------------------------
# Metrics (crates/kdlora-glue/src/metrics.rs)
# --------------------------------------------------------------------------------------------


def accuracy(pred, gold):
    return sum(1 for p, g in zip(pred, gold) if p == g) / len(gold)


def f1(pred, gold):
    tp = sum(1 for p, g in zip(pred, gold) if p == 1 and g == 1)
    fp = sum(1 for p, g in zip(pred, gold) if p == 1 and g != 1)
    fn = sum(1 for p, g in zip(pred, gold) if p != 1 and g == 1)
    d = 2 * tp + fp + fn
    return 0.0 if d == 0 else 2.0 * tp / d


def matthews(pred, gold):
    classes = max(list(pred) + list(gold)) + 1
    predicted, truth, correct = [0.0] * classes, [0.0] * classes, 0.0
    for p, g in zip(pred, gold):
        predicted[p] += 1.0
        truth[g] += 1.0
        correct += 1.0 if p == g else 0.0
    n = float(len(gold))
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    cov_pt = correct * n - dot(predicted, truth)
    cov_pp = n * n - dot(predicted, predicted)
    cov_tt = n * n - dot(truth, truth)
    den = math.sqrt(cov_pp * cov_tt)
    return 0.0 if den == 0.0 else cov_pt / den


def pearson(x, y):
    if any(not math.isfinite(v) for v in list(x) + list(y)):
        raise ValueError("correlation input contains a non-finite value")
    n = float(len(x))
    mx, my = sum(x) / n, sum(y) / n
    sxy = sxx = syy = 0.0
    for a, b in zip(x, y):
        dx, dy = a - mx, b - my
        sxy += dx * dy
        sxx += dx * dx
        syy += dy * dy
    if sxx == 0.0 or syy == 0.0:
        print("warning: correlation of a constant input is undefined; reporting 0",
              file=sys.stderr)
        return 0.0
    return max(-1.0, min(1.0, sxy / (math.sqrt(sxx) * math.sqrt(syy))))


def average_ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and values[order[end]] == values[order[start]]:
            end += 1
        rank = (start + 1 + end) / 2.0
        for i in order[start:end]:
            ranks[i] = rank
        start = end
    return ranks


def spearman(x, y):
    if any(not math.isfinite(v) for v in list(x) + list(y)):
        raise ValueError("correlation input contains a non-finite value")
    return pearson(average_ranks(x), average_ranks(y))


def task_score(task, pred, gold):
    """`evaluate(...).score`: mean of the task's metrics, x100."""
    if len(pred) != len(gold) or not gold:
        raise ValueError(f"{len(pred)} predictions but {len(gold)} labels")
    fns = {"accuracy": accuracy, "f1": f1, "mcc": matthews, "pearson": pearson,
           "spearman": spearman}
    values = [fns[m](pred, gold) for m in TASKS[task]["metrics"]]
    return 100.0 * sum(values) / len(values)


# --------------------------------------------------------------------------------------------
# Recipe pieces
# --------------------------------------------------------------------------------------------


def mix_seed(seed, stream, n):
    """runner.rs `mix_seed`: SplitMix64 finaliser over (seed, stream, n)."""
    m = (1 << 64) - 1
    z = (seed + stream * 0x9E3779B97F4A7C15 + n * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def linear_schedule(base_lr, step, total, warmup):
    """optim.rs `linear_schedule` (= transformers' get_linear_schedule_with_warmup)."""
    if step < warmup:
        return base_lr * step / max(warmup, 1)
    remaining = max(total - step, 0)
    span = max(max(total - warmup, 0), 1)
    return base_lr * max(remaining / span, 0.0)


def steps_per_epoch(n, batch_size, grad_accumulation):
    return -(-(-(-n // batch_size)) // grad_accumulation)


def warmup_steps(ratio, total):
    return int(math.ceil(ratio * total))


def kd_loss(student, teacher, labels, temperature, alpha):
    """kdlora_distill::kd_loss: alpha * CE + (1 - alpha) * T^2 * KL(p_t || p_s), batch mean."""
    import torch.nn.functional as F

    hard = F.cross_entropy(student, labels)
    log_ps = F.log_softmax(student / temperature, dim=1)
    log_pt = F.log_softmax(teacher.detach() / temperature, dim=1)
    soft = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean() * (temperature * temperature)
    return alpha * hard + (1.0 - alpha) * soft


def regression_kd_loss(student, teacher, targets, alpha):
    """kdlora_distill::regression_kd_loss: alpha * MSE(s, y) + (1 - alpha) * MSE(s, t)."""
    s = student.reshape(-1)
    hard = (s - targets).square().mean()
    soft = (s - teacher.detach().reshape(-1)).square().mean()
    return alpha * hard + (1.0 - alpha) * soft


def param_groups(model):
    """optim.rs `param_groups`: no decay for biases and LayerNorm tensors, decay for the rest."""
    import torch.nn as nn

    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            full = f"{mname}.{pname}" if mname else pname
            if pname == "bias" or isinstance(module, nn.LayerNorm):
                no_decay.append(p)
                no_decay_names.append(full)
            else:
                decay.append(p)
                decay_names.append(full)
    return decay, no_decay, decay_names, no_decay_names


def name_matches(name, path):
    """kdlora_lora::name_matches (= PEFT's rule for a target name)."""
    return path == name or (len(path) > len(name) and path.endswith(name)
                            and path[len(path) - len(name) - 1] == ".")


def module_covers(name, path):
    """kdlora_lora::module_covers: some `.`-prefix of `path` (or `path`) ends with `name`."""
    if not name:
        return False
    parts = path.split(".")
    return any(".".join(parts[:i]).endswith(name) for i in range(1, len(parts) + 1))


def attach_lora(model, lora, model_type):
    """kdlora_lora::inject with PEFT; refuses what PEFT would do differently."""
    import torch
    import torch.nn as nn
    from peft import LoraConfig, get_peft_model

    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    targets = lora["target_modules"]
    if targets is None:
        if model_type not in DEFAULT_TARGETS:
            raise ConfigError(f"`lora.target_modules`: no default targets for model type "
                              f"`{model_type}`; name them")
        targets = DEFAULT_TARGETS[model_type]
    if isinstance(targets, str):
        rx = re.compile(f"(?:{targets})")
        entries = [(targets, lambda p: rx.fullmatch(p) is not None)]
    else:
        entries = [(t, (lambda t: lambda p: name_matches(t, p))(t)) for t in targets]
    for entry, match in entries:
        if not any(match(p) for p in linears):
            raise ConfigError(f"`lora.target_modules`: `{entry}` matches no linear module of this "
                              f"{model_type} model (e.g. {', '.join(linears[:6])})")
    matched = [p for p in linears if any(m(p) for _, m in entries)]
    save = lora["modules_to_save"]
    if save is None:
        save = HEAD_MODULES.get(model_type)
        if save is None:
            raise ConfigError(f"no default head modules for model type `{model_type}`; set "
                              "`lora.modules_to_save`")
    inside = [p for p in matched if any(module_covers(n, p) for n in save)]
    if inside:
        raise ConfigError(f"LoRA targets {', '.join(inside)} lie inside `modules_to_save`: kdlora "
                          "leaves them unadapted, PEFT would adapt them; refusing")
    if lora["train_head"]:
        # kdlora trains the linear modules covered by the names; PEFT wraps every module whose
        # path ends with a name. Both must mean the same tensors.
        kd_params = set()
        for p in linears:
            if any(module_covers(n, p) for n in save):
                kd_params.update(f"{p}.{q}" for q, _ in model.get_submodule(p).named_parameters())
        for n in save:
            if not any(module_covers(n, p) for p in linears):
                print(f"warning: modules_to_save entry `{n}` matches no linear module; ignored "
                      "(as kdlora)", file=sys.stderr)
        # PEFT matches the names against the wrapped model's paths (`base_model.model.<path>`).
        if any(k.endswith(n) for k in ("base_model", "base_model.model") for n in save):
            raise ConfigError(f"`lora.modules_to_save` = {save}: PEFT would wrap the whole model")
        peft_params = set()
        for mname, module in model.named_modules():
            if mname and any(f"base_model.model.{mname}".endswith(n) for n in save):
                peft_params.update(f"{mname}.{q}" for q, _ in module.named_parameters())
        if kd_params != peft_params:
            diff = sorted(kd_params ^ peft_params)[:6]
            raise ConfigError(f"`lora.modules_to_save` = {save}: PEFT would train a different set "
                              f"of tensors than kdlora (differing: {', '.join(diff)}); refusing")
        save = [n for n in save if any(module_covers(n, p) for p in linears)]
    peft_cfg = LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=targets, bias="none", use_rslora=lora["use_rslora"],
        init_lora_weights=True if lora["init"] == "kaiming_uniform" else "gaussian",
        modules_to_save=(save or None) if lora["train_head"] else None,
    )
    torch.manual_seed(lora["seed"])
    peft_model = get_peft_model(model, peft_cfg)
    adapted = sorted({n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters()
                      if ".lora_A." in n})
    expected = sorted(f"base_model.model.{p}" for p in matched)
    if adapted != expected:
        raise ConfigError(f"PEFT adapted {len(adapted)} modules, kdlora would adapt "
                          f"{len(expected)}; refusing")
    return peft_model


def load_model(path, n_labels):
    import torch
    from transformers import AutoModelForSequenceClassification

    kwargs = {} if n_labels is None else {"num_labels": n_labels}
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, torch_dtype=torch.float32, attn_implementation="eager", output_loading_info=True,
        **kwargs)
    fresh = sorted({k.rsplit(".", 1)[0] for k in info.get("missing_keys", [])})
    if fresh:
        log(f"{path}: no weights for {', '.join(fresh)}: freshly initialised (normal, std "
            f"{model.config.initializer_range}, zero bias)")
    if info.get("mismatched_keys"):
        raise ConfigError(f"{path}: tensors of the wrong shape: {info['mismatched_keys']}")
    return model.float()


def forward(model, model_type, batch):
    input_ids, attention_mask, token_type_ids = batch
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask)
    if model_type != "distilbert":
        kwargs["token_type_ids"] = token_type_ids
    return model(**kwargs).logits


def all_logits(torch, model, model_type, encoded, batch_size, pad):
    out = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            positions = list(range(start, min(start + batch_size, len(encoded))))
            out.append(forward(model, model_type, make_batch(torch, encoded, positions, *pad))
                       .float())
    return torch.cat(out, dim=0)


def evaluate(torch, model, model_type, task, encoded, gold, batch_size, pad):
    was_training = model.training
    model.eval()
    logits = all_logits(torch, model, model_type, encoded, batch_size, pad).numpy()
    if was_training:
        model.train()
    if task == "stsb":
        pred = [float(v) for v in logits[:, 0]]  # f32 widened to f64, as kdlora
    else:
        pred = [int(v) for v in logits.argmax(axis=1)]  # first maximum on ties
    return task_score(task, pred, gold)


def write_json_atomic(path, value):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt"]


def save_dir_atomic(target, write):
    staged = f"{target}.tmp-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    os.makedirs(staged)
    write(staged)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staged, target)


def log(msg):
    print(f"[torch_recipe] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def run(args):
    cfg = load_config(args.config)
    method, task = cfg["method"], cfg["task"]
    uses_lora = method in ("lora", "kd-lora")
    uses_teacher = method in ("kd-lora", "kd")
    if uses_teacher and not args.teacher:
        raise ConfigError(f"method `{method}` needs --teacher (the OUT_DIR of the PyTorch FFT run "
                          "of the same task)")
    if not uses_teacher and args.teacher:
        raise ConfigError(f"method `{method}` takes no --teacher")
    model_dir = cfg["model"]
    if not os.path.isdir(model_dir):
        raise ConfigError(f"`model`: {model_dir} is not a model folder (Hub ids are not supported "
                          "here; use the resolved folder kdlora saved in its config.toml)")
    threads = args.threads or os.cpu_count() or 1
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))

    import numpy as np
    import peft
    import torch
    import transformers

    torch.set_num_threads(threads)
    np.random.seed(cfg["seed"] % (1 << 32))
    import random

    random.seed(cfg["seed"])
    transformers.logging.set_verbosity_error()

    n_labels = num_labels(task)
    tokenizer = Tokenizer(os.path.join(model_dir, "tokenizer.json"), cfg["max_len"])
    pad = (tokenizer.pad_id, tokenizer.pad_type_id)
    train_rows = load_split(cfg["data"], task, "train", cfg["max_train_examples"])
    dev_rows = load_split(cfg["data"], task, "dev", cfg["max_eval_examples"])
    dev_mm_rows = (load_split(cfg["data"], task, "dev_mismatched", cfg["max_eval_examples"],
                              required=False) if task == "mnli" else None)
    train_enc = tokenizer.encode(train_rows)
    dev_enc = tokenizer.encode(dev_rows)
    dev_mm_enc = tokenizer.encode(dev_mm_rows) if dev_mm_rows else None
    log(f"{task}: {len(train_rows)} train, {len(dev_rows)} dev rows"
        + (f", {len(dev_mm_rows)} dev mismatched" if dev_mm_rows else "")
        + f"; method {method}; {threads} threads")

    teacher_logits = None
    if uses_teacher:
        teacher_dir = os.path.join(args.teacher, "model")
        if not os.path.isfile(os.path.join(teacher_dir, "config.json")):
            raise ConfigError(f"--teacher {args.teacher}: no model/config.json (pass the OUT_DIR "
                              "of a torch_recipe.py fft run)")
        teacher = load_model(teacher_dir, None)
        if teacher.config.num_labels != n_labels:
            raise ConfigError(f"--teacher has {teacher.config.num_labels} outputs, {task} needs "
                              f"{n_labels}")
        teacher.eval()
        t_tok = Tokenizer(os.path.join(teacher_dir, "tokenizer.json"), cfg["max_len"])
        t_start = time.perf_counter()
        teacher_logits = all_logits(torch, teacher, teacher.config.model_type,
                                    t_tok.encode(train_rows), cfg["eval_batch_size"],
                                    (t_tok.pad_id, t_tok.pad_type_id))
        del teacher
        if not torch.isfinite(teacher_logits).all():
            raise DataError("teacher logits contain a non-finite value")
        log(f"teacher logits {tuple(teacher_logits.shape)} in "
            f"{time.perf_counter() - t_start:.1f}s")

    torch.manual_seed(cfg["seed"])
    model = load_model(model_dir, n_labels)
    model_type = model.config.model_type
    if uses_lora:
        model = attach_lora(model, cfg["lora"], model_type)
    model.train()
    decay, no_decay, decay_names, no_decay_names = param_groups(model)
    trainable = [p for p in decay + no_decay]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    log(f"{model_type}: {n_trainable} trainable of {n_total} parameters "
        f"({len(decay)} decay / {len(no_decay)} no-decay tensors)")
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8)

    n = len(train_rows)
    gold_train = [label for _, _, label in train_rows]
    if task == "stsb":
        labels_t = torch.tensor(gold_train, dtype=torch.float32)
    else:
        labels_t = torch.tensor(gold_train, dtype=torch.long)
    gold_dev = [label for _, _, label in dev_rows]
    gold_dev_mm = [label for _, _, label in dev_mm_rows] if dev_mm_rows else None
    total = steps_per_epoch(n, cfg["batch_size"], cfg["grad_accumulation"]) * cfg["epochs"]
    warmup = warmup_steps(cfg["warmup_ratio"], total)
    kd = cfg["kd"]

    records, step, train_seconds = [], 0, 0.0
    for epoch in range(cfg["epochs"]):
        gen = torch.Generator()
        gen.manual_seed(mix_seed(cfg["seed"], 1, epoch))
        order = torch.randperm(n, generator=gen).tolist()
        if cfg["group_by_length"]:
            # runner.rs `epoch_batches`: each window of the shuffled order sorted by token
            # count, longest first, stable on ties.
            window = cfg["batch_size"] * LENGTH_WINDOW_BATCHES
            order = [p for i in range(0, n, window)
                     for p in sorted(order[i:i + window], key=lambda p: -len(train_enc[p][0]))]
        batches = [order[i:i + cfg["batch_size"]] for i in range(0, n, cfg["batch_size"])]
        groups = [batches[i:i + cfg["grad_accumulation"]]
                  for i in range(0, len(batches), cfg["grad_accumulation"])]
        loss_sum, loss_count = 0.0, 0
        for group in groups:
            t0 = time.perf_counter()
            torch.manual_seed(mix_seed(cfg["seed"], 2, step))
            lr = linear_schedule(cfg["lr"], step, total, warmup)
            for g in optim.param_groups:
                g["lr"] = lr
            optim.zero_grad(set_to_none=True)
            for positions in group:
                batch = make_batch(torch, train_enc, positions, *pad)
                logits = forward(model, model_type, batch)
                idx = torch.tensor(positions, dtype=torch.long)
                y = labels_t[idx]
                if teacher_logits is None:
                    if task == "stsb":
                        loss = (logits.reshape(-1) - y).square().mean()
                    else:
                        loss = torch.nn.functional.cross_entropy(logits, y)
                else:
                    t = teacher_logits[idx]  # by example index, never by batch position
                    if task == "stsb":
                        loss = regression_kd_loss(logits, t, y, kd["alpha"])
                    else:
                        loss = kd_loss(logits, t, y, kd["temperature"], kd["alpha"])
                value = loss.item()
                if not math.isfinite(value):
                    raise RuntimeError(f"non-finite loss {value} at step {step + 1}, "
                                       f"epoch {epoch + 1}")
                (loss / len(group)).backward()
                loss_sum += value
                loss_count += 1
            if cfg["grad_clip"] > 0:
                norm = torch.nn.utils.clip_grad_norm_(trainable, cfg["grad_clip"])
            else:
                grads = [p.grad.detach().norm(2) for p in trainable if p.grad is not None]
                norm = torch.linalg.vector_norm(torch.stack(grads), 2) if grads else None
            if norm is not None and not math.isfinite(float(norm)):
                raise RuntimeError(f"non-finite gradient norm at step {step + 1}, "
                                   f"epoch {epoch + 1}")
            optim.step()
            step += 1
            train_seconds += time.perf_counter() - t0
            if step % 10 == 0 or step == total:
                log(f"epoch {epoch + 1} step {step}/{total} loss {value:.4f} lr {lr:.3g}")
        score = evaluate(torch, model, model_type, task, dev_enc, gold_dev,
                         cfg["eval_batch_size"], pad)
        score_mm = (evaluate(torch, model, model_type, task, dev_mm_enc, gold_dev_mm,
                             cfg["eval_batch_size"], pad) if dev_mm_enc else None)
        record = {"epoch": epoch + 1, "step": step,
                  "train_loss": loss_sum / max(loss_count, 1), "score": score,
                  "score_mismatched": score_mm}
        records.append(record)
        log(f"epoch {epoch + 1}: train_loss {record['train_loss']:.4f} score {score:.2f}"
            + (f" mismatched {score_mm:.2f}" if score_mm is not None else ""))

    best = records[0]
    for r in records:
        if r["score"] >= best["score"]:  # Rust's max_by keeps the last maximum
            best = r

    os.makedirs(args.out, exist_ok=True)
    model.eval()
    if uses_lora:
        save_dir_atomic(os.path.join(args.out, "adapter"), lambda d: model.save_pretrained(d))
    else:
        def write_model(d):
            model.save_pretrained(d, safe_serialization=True)
            for name in TOKENIZER_FILES:
                src = os.path.join(model_dir, name)
                if os.path.isfile(src):
                    shutil.copyfile(src, os.path.join(d, name))
        save_dir_atomic(os.path.join(args.out, "model"), write_model)

    metrics = {
        "schema": SCHEMA,
        "method": method,
        "task": task,
        "model": os.path.realpath(model_dir),
        "seed": cfg["seed"],
        "train_examples": n,
        "dev_examples": len(dev_rows),
        "epochs": records,
        "last": records[-1],
        "best": best,
        "train_seconds": train_seconds,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "python": platform.python_version()},
        "threads": threads,
    }
    write_json_atomic(os.path.join(args.out, "metrics.json"), metrics)
    log(f"wrote {os.path.join(args.out, 'metrics.json')}: last {records[-1]['score']:.2f}, "
        f"best {best['score']:.2f} (epoch {best['epoch']})")
    return 0


# --------------------------------------------------------------------------------------------
# Self-test (no model files needed)
# --------------------------------------------------------------------------------------------


def self_test():
    import torch

    failures = []

    def check(name, got, want, tol=1e-9):
        ok = abs(got - want) <= tol * max(1.0, abs(want))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {got!r} (expected {want!r})")
        if not ok:
            failures.append(name)

    # KD loss, by hand: s = [1, 0], t = [0, 1], label 0, T = 2, alpha = 0.5.
    # p_s(T) = softmax([0.5, 0]), p_t(T) = softmax([0, 0.5]); CE(s, 0) = log(1 + e^-1).
    e = math.exp(0.5)
    ps = [e / (1 + e), 1 / (1 + e)]
    pt = [1 / (1 + e), e / (1 + e)]
    kl = sum(pt[c] * math.log(pt[c] / ps[c]) for c in range(2))
    ce = math.log(1 + math.exp(-1.0))
    want = 0.5 * ce + 0.5 * 4.0 * kl  # = 0.5 * 0.313262 + 2 * 0.122459 = 0.401550
    # Batch of two identical rows plus a row where student == teacher: the soft term must be a
    # batch mean (sum over classes), not a mean over classes as well.
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, -1.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0])
    ce3 = math.log(1 + math.exp(-4.0))
    want3 = (2 * (0.5 * ce + 2.0 * kl) + 0.5 * ce3) / 3
    check("kd_loss single row closed form", kd_loss(s[:1], t[:1], y[:1], 2.0, 0.5).item(), want)
    check("kd_loss batch mean", kd_loss(s, t, y, 2.0, 0.5).item(), want3)
    check("kd_loss alpha=1 is CE", kd_loss(s[:1], t[:1], y[:1], 2.0, 1.0).item(), ce)
    check("kd_loss T^2 scaling (T=4)", kd_loss(s[:1], t[:1], y[:1], 4.0, 0.0).item(),
          16.0 * sum(q * math.log(q / p) for q, p in zip(
              [1 / (1 + math.exp(0.25)), math.exp(0.25) / (1 + math.exp(0.25))],
              [math.exp(0.25) / (1 + math.exp(0.25)), 1 / (1 + math.exp(0.25))])))
    sr = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    tr = torch.tensor([[2.0], [3.0]], dtype=torch.float64)
    yr = torch.tensor([0.0, 5.0], dtype=torch.float64)
    # hard = (1 + 4) / 2 = 2.5, soft = (1 + 0) / 2 = 0.5; alpha 0.25 -> 0.625 + 0.375 = 1.0
    check("regression_kd_loss (no temperature)", regression_kd_loss(sr, tr, yr, 0.25).item(), 1.0)

    # Metrics (scikit-learn's documented examples and hand computations).
    gold, pred = [1, 1, 1, 0], [1, 0, 1, 1]
    check("matthews", matthews(pred, gold), -1.0 / 3.0)
    check("matthews constant prediction", matthews([1, 1, 1, 1], gold), 0.0)
    check("matthews 3 classes", matthews([0, 2, 1, 0, 2], [0, 1, 1, 0, 2]),
          (4 * 5 - (2 * 2 + 1 * 2 + 2 * 1)) / math.sqrt((25 - 9) * (25 - 9)))
    check("accuracy", accuracy(pred, gold), 0.5)
    check("f1", f1(pred, gold), 2 / 3)
    check("f1 0/0", f1([0, 0], [0, 0]), 0.0)
    check("pearson", pearson([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]), 3.0 / math.sqrt(2.0 * 14.0 / 3.0))
    check("pearson constant", pearson([1.0, 1.0, 1.0], [1.0, 2.0, 4.0]), 0.0)
    check("average_ranks ties", sum(abs(a - b) for a, b in zip(
        average_ranks([3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0])), 0.0)
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: sxy = 4.5, sxx = 4.5, syy = 5
    check("spearman with ties", spearman([1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0]),
          4.5 / math.sqrt(4.5 * 5.0))
    check("score mrpc", task_score("mrpc", pred, gold), 100 * (0.5 + 2 / 3) / 2)
    check("score cola", task_score("cola", pred, gold), -100 / 3)
    check("score stsb", task_score("stsb", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0]),
          100 * (3.0 / math.sqrt(28.0 / 3.0) + 1.0) / 2)
    try:
        import scipy.stats

        x = [0.3, 1.2, 1.2, 4.0, 2.2, 0.1]
        yy = [0.5, 1.0, 2.0, 3.5, 3.5, 0.0]
        check("pearson vs scipy", pearson(x, yy), float(scipy.stats.pearsonr(x, yy)[0]), 1e-12)
        check("spearman vs scipy", spearman(x, yy), float(scipy.stats.spearmanr(x, yy)[0]), 1e-12)
    except ImportError:
        print("skip scipy cross-check (scipy not installed)")

    # Schedule (the values of optim.rs's test = get_linear_schedule_with_warmup(2, 10)).
    want_lr = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    check("linear_schedule warmup 2 of 10", sum(abs(linear_schedule(1.0, k, 10, 2) - w)
                                                for k, w in enumerate(want_lr)), 0.0)
    check("linear_schedule no warmup first step", linear_schedule(1.0, 0, 4, 0), 1.0)
    check("linear_schedule no warmup last step", linear_schedule(1.0, 3, 4, 0), 0.25)
    check("steps_per_epoch 65 rows, batch 32, accumulation 2", steps_per_epoch(65, 32, 2), 2)
    check("warmup_steps ceil", warmup_steps(0.1, 21), 3)
    check("mix_seed deterministic u64", float(mix_seed(42, 1, 0) < (1 << 64)), 1.0)

    # Readers: BOM, CRLF, final newline, strict columns, label spellings.
    rows = parse_tsv(b"\xef\xbb\xbfQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
                     b"1\t1\t2\ta b\tc d\r\n0\t3\t4\te\tf\r\n", "MRPC/x.tsv", "mrpc", "train")
    check("tsv BOM+CRLF rows", len(rows), 2)
    check("tsv label", rows[1][2], 0)
    ok = rows[0][:2] == ("a b", "c d")
    print(f"{'ok  ' if ok else 'FAIL'} tsv texts: {rows[0][:2]}")
    if not ok:
        failures.append("tsv texts")
    rows = parse_tsv(b"gj04\t1\t\tA sentence .\n", "CoLA/train.tsv", "cola", "train")
    check("cola header-less label", rows[0][2], 1)
    rows = parse_tsv(b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tnot_entailment\n",
                     "RTE/dev.tsv", "rte", "dev")
    check("rte string label", rows[0][2], 1)
    rows = parse_jsonl(b'{"sentence1": "a", "sentence2": "b", "label": 3.8, "idx": 0}\n',
                       "stsb/train.jsonl", "stsb", "train")
    check("jsonl stsb score (f32)", rows[0][2], float(__import__("numpy").float32(3.8)))
    for bad, what in [(b"Quality\t#1 String\t#2 String\n01\ta\tb\n", "non-canonical 01"),
                      (b"Quality\t#1 String\t#2 String\n1\ta\n", "short row")]:
        try:
            parse_tsv(bad, "x.tsv", "mrpc", "train")
            print(f"FAIL tsv rejects {what}")
            failures.append(what)
        except DataError:
            print(f"ok   tsv rejects {what}")
    check("name_matches component", float(name_matches("query", "bert.x.self.query")
                                          and not name_matches("uery", "bert.x.self.query")), 1.0)
    check("module_covers pre_classifier", float(module_covers("classifier", "pre_classifier")
                                                and module_covers("bert.pooler",
                                                                  "bert.pooler.dense")), 1.0)

    # Weight-decay grouping and LoRA attachment on a tiny random BERT (no files).
    try:
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        tiny = BertForSequenceClassification(BertConfig(
            vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=16, num_labels=2))
        lora = dict(LORA_DEFAULTS, modules_to_save=["classifier", "bert.pooler"])
        m = attach_lora(tiny, lora, "bert")
        decay, no_decay, dn, ndn = param_groups(m)
        want_decay = {"lora_A", "lora_B", "classifier.modules_to_save.default.weight",
                      "pooler.modules_to_save.default.dense.weight"}
        got = all(any(w in n for n in dn) for w in want_decay)
        got = got and all(n.endswith("bias") for n in ndn) and not any("LayerNorm" in n for n in dn)
        print(f"{'ok  ' if got else 'FAIL'} decay groups: decay {dn}, no decay {ndn}")
        if not got:
            failures.append("decay groups")
        n_tr = sum(p.numel() for p in decay + no_decay)
        # query+value adapters: 2 * r * (8 + 8); classifier 8*2+2; pooler 8*8+8
        check("lora trainable parameters", n_tr, 2 * 8 * 16 + 18 + 72)
        full = BertForSequenceClassification(tiny.config)
        _, nd_full, _, ndn_full = param_groups(full)
        check("fft no-decay tensors (biases + LayerNorm weights)",
              sum(1 for n in ndn_full if n.endswith("LayerNorm.weight")), 3)
        try:
            attach_lora(BertForSequenceClassification(tiny.config),
                        dict(LORA_DEFAULTS, target_modules=["dense"],
                             modules_to_save=["bert.pooler"]), "bert")
            print("FAIL refuses targets inside modules_to_save")
            failures.append("targets inside modules_to_save")
        except ConfigError:
            print("ok   refuses targets inside modules_to_save")
    except ImportError as e:
        print(f"skip model checks ({e})")

    print(f"self-test: {'FAILED ' + ', '.join(failures) if failures else 'all passed'}")
    return 1 if failures else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="kdlora run configuration (RUN_DIR/config.toml)")
    p.add_argument("--out", help="output folder (metrics.json, model/ or adapter/)")
    p.add_argument("--teacher", help="OUT_DIR of the PyTorch FFT run (kd-lora, kd)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--self-test", action="store_true", help="check losses, metrics, schedule")
    args = p.parse_args(argv)
    if args.self_test:
        return self_test()
    if not args.config or not args.out:
        p.error("--config and --out are required (or --self-test)")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    try:
        return run(args)
    except ConfigError as e:
        print(f"torch_recipe.py: configuration not supported: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"torch_recipe.py: data error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
