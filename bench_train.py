"""
Throughput of the real training step (train_gpt2.train_step: forward, backward, gradient
clipping, plus optimizer.step), eager against torch.compile, with MFU against a peak measured
in the same run on CPU (or the datasheet peak on a GPU).

    python bench_train.py                                # GPT-2 124M, seq_len 1024, batch 4, bf16
    python bench_train.py --batch_size 2 --dtype float32 --modes compiled
    python bench_train.py --profile                      # where the eager step's time goes

Each mode runs in a subprocess of its own, so that its peak memory (RSS) is its own.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import train_gpt2
from fineweb import write_shard
from model import GPT, GPTConfig


def make_data(data_dir, tokens):
    # random GPT-2 ids: the step's cost does not depend on which tokens they are
    rng = np.random.default_rng(0)
    write_shard(os.path.join(data_dir, "bench_val_000000.bin"), rng.integers(0, 50257, 4096))
    write_shard(os.path.join(data_dir, "bench_train_000001.bin"), rng.integers(0, 50257, tokens))


def peak_flops(device, dtype):
    if device == "cuda":
        return train_gpt2.gpu_peak_flops(torch.cuda.get_device_name(), dtype), "datasheet"
    return train_gpt2.measure_peak_flops(device, dtype), "measured"


def run_mode(args):
    """Time args.steps steps in this process and print one JSON line of results."""
    device = args.device
    torch.manual_seed(0)
    config = GPTConfig(block_size=args.seq_len, vocab_size=50304, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config).to(device)
    optimizer = model.configure_optimizers(0.1, 6e-4, device)
    train_model = torch.compile(model, dynamic=False) if args.mode == "compiled" else model
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    with tempfile.TemporaryDirectory() as data_dir:
        make_data(data_dir, args.batch_size * args.seq_len * (args.steps + args.warmup + 2) + 1)
        loader = train_gpt2.DataLoaderLite(args.batch_size, args.seq_len, 0, 1, "train", data_dir)
        times = []
        t_compile = time.perf_counter()
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            train_gpt2.train_step(train_model, optimizer, loader, 1, autocast, device, 6e-4, 1.0)
            optimizer.step()
            train_gpt2.sync(device)
            times.append(time.perf_counter() - t0)
            if i == 0:
                t_compile = time.perf_counter() - t_compile
        # the data loader alone, for the same number of batches
        loader.reset()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loader.next_batch()
        t_data = (time.perf_counter() - t0) / args.steps
    step = statistics.median(times[args.warmup :])
    tokens = args.batch_size * args.seq_len
    flops_token = train_gpt2.flops_per_token(config, args.seq_len)
    print(json.dumps({
        "mode": args.mode, "step_s": step, "first_step_s": t_compile, "tokens_per_s": tokens / step,
        "flops_per_token": flops_token, "flops_per_s": flops_token * tokens / step, "data_s": t_data,
        "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "params": model.num_params(),
    }))


def profile(args):
    """Where the eager step's time goes, by kind of op."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    device = args.device
    config = GPTConfig(block_size=args.seq_len, vocab_size=50304, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config).to(device)
    optimizer = model.configure_optimizers(0.1, 6e-4, device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    with tempfile.TemporaryDirectory() as data_dir:
        make_data(data_dir, args.batch_size * args.seq_len * 4 + 1)
        loader = train_gpt2.DataLoaderLite(args.batch_size, args.seq_len, 0, 1, "train", data_dir)
        train_gpt2.train_step(model, optimizer, loader, 1, autocast, device, 6e-4, 1.0)  # warm-up
        optimizer.step()
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            train_gpt2.train_step(model, optimizer, loader, 1, autocast, device, 6e-4, 1.0)
            optimizer.step()
    vocab = config.vocab_size
    buckets = {}
    total = 0.0
    for e in prof.key_averages(group_by_input_shape=True):
        # self time: each op's own work, so that nested ops are not counted twice
        t = e.self_cpu_time_total / 1e6
        total += t
        name, shapes = e.key, str(e.input_shapes)
        if "scaled_dot_product" in name or "flash_attention" in name:
            kind = "attention (SDPA forward and backward)"
        elif name in ("aten::mm", "aten::addmm", "aten::bmm") and str(vocab) in shapes:
            kind = "lm_head matmuls"
        elif name in ("aten::mm", "aten::addmm", "aten::bmm"):
            kind = "qkv, attention-out and MLP matmuls"
        elif "log_softmax" in name or "nll_loss" in name or "cross_entropy" in name:
            kind = "cross-entropy"
        elif "adam" in name.lower():
            kind = "optimizer (fused AdamW)"
        elif "gelu" in name:
            kind = "GELU"
        elif "layer_norm" in name:
            kind = "LayerNorm"
        elif "copy_" in name or "to_copy" in name or "clone" in name or "contiguous" in name:
            kind = "copies and dtype casts"
        else:
            kind = "the rest"
        buckets[kind] = buckets.get(kind, 0.0) + t
    print(f"eager step profile, {args.dtype}, batch {args.batch_size} x {args.seq_len}, total self time {total:.2f}s:")
    for kind, t in sorted(buckets.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:40s} {t:7.3f}s  {100 * t / total:5.1f}%")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", default="eager,compiled", help="comma-separated: eager, compiled")
    p.add_argument("--steps", type=int, default=5, help="timed steps per mode (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--profile", action="store_true", help="print where the eager step's time goes, and exit")
    p.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = p.parse_args()
    if args.mode:
        return run_mode(args)
    if args.profile:
        return profile(args)

    peak, how = peak_flops(args.device, args.dtype)
    peak_fp32, _ = peak_flops(args.device, "float32") if args.dtype != "float32" else (peak, how)
    results = {}
    for mode in args.modes.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode] + [
            f"--{k}={getattr(args, k)}" for k in ("n_layer", "n_head", "n_embd", "batch_size", "seq_len", "dtype", "device", "steps", "warmup")
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])

    r0 = next(iter(results.values()))
    print(f"model: n_layer {args.n_layer}, n_head {args.n_head}, n_embd {args.n_embd}, {r0['params']:,} parameters; "
          f"batch {args.batch_size} x seq_len {args.seq_len}, {args.dtype}, device {args.device}")
    print(f"FLOPs per token: {r0['flops_per_token'] / 1e6:.1f}M (6 * non-wpe parameters + 12 * n_layer * seq_len * n_embd for attention)")
    print(f"peak ({how}): {args.dtype} {peak / 1e12:.3f} TFLOP/s" + (f", float32 {peak_fp32 / 1e12:.3f} TFLOP/s" if args.dtype != "float32" else ""))
    print(f"{'mode':10s} {'step (median)':>14s} {'first step':>11s} {'tokens/s':>10s} {'TFLOP/s':>9s} {'MFU':>6s} {'data/step':>10s} {'peak RSS':>9s}")
    for mode, r in results.items():
        mfu = r["flops_per_s"] / peak
        print(f"{mode:10s} {r['step_s'] * 1000:12.0f}ms {r['first_step_s']:10.1f}s {r['tokens_per_s']:10.0f} "
              f"{r['flops_per_s'] / 1e12:9.3f} {100 * mfu:5.1f}% {100 * r['data_s'] / r['step_s']:9.3f}% {r['max_rss_gb']:7.2f}GB")
    if "eager" in results and "compiled" in results:
        print(f"compiled / eager tokens/s: {results['compiled']['tokens_per_s'] / results['eager']['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
