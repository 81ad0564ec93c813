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
Prints one JSON object on stdout.
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
    args = p.parse_args()

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=args.num_labels, torch_dtype=torch.float32
    )
    vocab = model.config.vocab_size
    ids = torch.randint(1000, vocab, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    labels = torch.randint(0, args.num_labels, (args.batch,))
    teacher = torch.randn(args.batch, args.num_labels)

    if args.mode in ("lora", "kd-lora", "inference"):
        from peft import LoraConfig, TaskType, get_peft_model

        targets = {"distilbert": ["q_lin", "v_lin"], "deberta-v2": ["query_proj", "value_proj"]}.get(
            model.config.model_type, ["query", "value"]
        )
        cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=args.r, lora_alpha=16, lora_dropout=0.05,
                         target_modules=targets)
        model = get_peft_model(model, cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)

    times = []
    if args.mode == "inference":
        model = model.merge_and_unload()
        model.eval()
        with torch.no_grad():
            for i in range(args.warmup + args.steps):
                t = time.perf_counter()
                model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.sum().item()
                if i >= args.warmup:
                    times.append(time.perf_counter() - t)
    else:
        model.train()
        opt = torch.optim.AdamW(trainable, lr=5e-4, weight_decay=0.01)
        for i in range(args.warmup + args.steps):
            t = time.perf_counter()
            logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            loss = F.cross_entropy(logits, labels)
            if args.mode == "kd-lora":
                T = 2.0
                soft = F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(teacher / T, -1),
                                reduction="batchmean", log_target=True) * T * T
                loss = 0.5 * loss + 0.5 * soft
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(json.dumps({
        "framework": "pytorch",
        "torch": torch.__version__,
        "mode": args.mode,
        "model": os.path.basename(os.path.normpath(args.model)),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "seq": args.seq,
        "trainable_params": n_trainable,
        "median_step_s": med,
        "examples_per_s": args.batch / med,
        "peak_rss_mb": peak_rss_mb(),
        "steps": args.steps,
    }))


if __name__ == "__main__":
    main()
