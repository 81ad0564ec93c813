#!/usr/bin/env python3
"""PyTorch + PEFT reference for `cargo xtask bench --compare-torch`.

Measures the same configurations as kdlora's benchmark, on the same machine, with the same thread count:
training examples/s for FFT, LoRA and KD-LoRA steps (teacher logits precomputed, as kdlora's store does),
inference examples/s (merged adapters, eval mode, no grad) and peak host memory (VmHWM) of a process that
runs one configuration only.

Setup (pinned versions; CPU):
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.5.1 transformers==4.46.3 peft==0.13.2 safetensors
Run one configuration (xtask starts one process per configuration so peak memory is per configuration):
    python bench/torch_reference.py --model ../shared/models/paraphrase-MiniLM-L3-v2 --mode kd-lora \
        --threads 2 --batch 32 --seq 128 --steps 5 --warmup 2
Prints one JSON object on stdout, with the keys `kdlora bench` prints (median_step_s, examples_per_s,
peak_rss_mb, trainable_params, total_params, cpu_cores_used, ...).

What is identical to `kdlora bench`: a fixed random batch (ids from 1000 up, full attention mask, token
type 0), a fresh 2-class head, dropout active while training (hidden/attention 0.1, LoRA 0.05), LoRA r=8
alpha=16 on query and value with the head trained, the loss (cross-entropy; KD-LoRA: 0.5 CE + 0.5 T^2 KL at
T=2 against per-example teacher logits), reading the loss value each step, backward, global gradient-norm
clipping at 1.0, AdamW (0.9, 0.999, eps 1e-8) with weight decay 0.01 on weights and none on biases and
LayerNorm, inference with the adapters merged and unloaded, under no_grad, reading the logits back.
"""
import argparse
import json
import os
import statistics
import time


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def cpu_seconds():
    # Process CPU time of all threads: with wall time, how many cores were busy.
    return time.process_time()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--mode", choices=["fft", "lora", "kd-lora", "inference"], required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-labels", type=int, default=2)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args()

    import peft
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    device = torch.device(args.device)
    load_start = time.perf_counter()
    if os.path.isfile(args.model):
        # A config.json alone: that shape with random weights (e.g. BERT-base), as kdlora bench.
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.model, num_labels=args.num_labels)
        model = AutoModelForSequenceClassification.from_config(config, torch_dtype=torch.float32)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            args.model, num_labels=args.num_labels, torch_dtype=torch.float32,
            ignore_mismatched_sizes=True,
        )
    vocab = model.config.vocab_size
    low = 1000 if vocab > 2000 else 0
    ids = torch.randint(low, vocab, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    labels = torch.randint(0, args.num_labels, (args.batch,))
    # Teacher logits for four batches of examples, looked up by example index each step (as the
    # store in kdlora's training loop).
    teacher_store = 3.0 * (2.0 * torch.rand(4 * args.batch, args.num_labels) - 1.0)

    if args.mode in ("lora", "kd-lora", "inference"):
        from peft import LoraConfig, TaskType, get_peft_model

        targets = {"distilbert": ["q_lin", "v_lin"], "deberta-v2": ["query_proj", "value_proj"]}.get(
            model.config.model_type, ["query", "value"]
        )
        cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=args.r, lora_alpha=16, lora_dropout=0.05,
                         target_modules=targets)
        model = get_peft_model(model, cfg)
    model.to(device)
    ids, mask, types, labels = (t.to(device) for t in (ids, mask, types, labels))
    load_s = time.perf_counter() - load_start

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    losses = []
    cpu_start = wall_start = None
    if args.mode == "inference":
        model = model.merge_and_unload()
        model.eval()
        n_trainable = 0
        with torch.no_grad():
            for i in range(args.warmup + args.steps):
                if i == args.warmup:
                    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
                t = time.perf_counter()
                model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.cpu()
                if i >= args.warmup:
                    times.append(time.perf_counter() - t)
    else:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        trainable = [p for _, p in named]
        n_trainable = sum(p.numel() for p in trainable)
        # No weight decay on biases and LayerNorm, as kdlora's (and transformers' Trainer's) AdamW.
        no_decay = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]
        decay = [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n)]
        groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
        model.train()
        opt = torch.optim.AdamW(groups, lr=5e-4, betas=(0.9, 0.999), eps=1e-8)
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                cpu_start, wall_start = cpu_seconds(), time.perf_counter()
            t = time.perf_counter()
            logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            loss = F.cross_entropy(logits, labels)
            if args.mode == "kd-lora":
                T = 2.0
                rows = torch.arange(i * args.batch, (i + 1) * args.batch) % teacher_store.shape[0]
                teacher = teacher_store[rows].to(device)
                soft = F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(teacher / T, -1),
                                reduction="batchmean", log_target=True) * T * T
                loss = 0.5 * loss + 0.5 * soft
            losses.append(loss.item())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
    wall = time.perf_counter() - wall_start
    cores = (cpu_seconds() - cpu_start) / wall if wall > 0 else None
    med = statistics.median(times)
    print(json.dumps({
        "framework": "pytorch",
        "version": f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
        "mode": args.mode,
        "model": os.path.splitext(os.path.basename(os.path.normpath(args.model)))[0],
        "model_type": model.config.model_type,
        "device": args.device,
        "backend": f"torch-{args.device}",
        "threads": torch.get_num_threads(),
        "cpu_cores_used": cores,
        "batch": args.batch,
        "seq": args.seq,
        "lora_r": None if args.mode == "fft" else args.r,
        "trainable_params": n_trainable,
        "total_params": sum(p.numel() for p in model.parameters()),
        "median_step_s": med,
        "examples_per_s": args.batch / med,
        "step_seconds": times,
        "steps": args.steps,
        "warmup": args.warmup,
        "peak_rss_mb": peak_rss_mb(),
        "peak_device_mb": torch.cuda.max_memory_allocated() / 1e6 if device.type == "cuda" else None,
        "load_s": load_s,
        "loss_first_last": [losses[0], losses[-1]] if losses else None,
    }))


if __name__ == "__main__":
    main()
