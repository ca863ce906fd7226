"""
Throughput of the real training step (train_gpt2.train_step: forward, backward, gradient
clipping, plus optimizer.step), eager against torch.compile, with MFU against a peak measured
in the same run on CPU (or the datasheet peak on a GPU).

    python bench_train.py                                # GPT-2 124M, seq_len 1024, batch 4, bf16
    python bench_train.py --batch_size 2 --dtype float32 --modes compiled
    python bench_train.py --profile                      # where the step's time goes, eager and compiled

The modes share one model and one process and take turns step by step (eager, compiled, eager,
...), so that a machine whose speed drifts (a shared CPU, a GPU warming up) slows both alike and
their ratio holds. Peak memory is read per step (Linux: VmHWM after resetting it through
/proc/self/clear_refs), so each mode's figure is its own.
"""

import argparse
import os
import resource
import statistics
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


def reset_peak_rss():
    """Start a new peak-RSS window (Linux); False where the kernel does not offer it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gb():
    """The process's peak RSS since the last reset_peak_rss (or since it started)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB, since start


def build(args):
    torch.manual_seed(0)
    config = GPTConfig(block_size=args.seq_len, vocab_size=50304, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config).to(args.device)
    optimizer = model.configure_optimizers(0.1, 6e-4, args.device)
    autocast = torch.autocast(device_type=args.device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    return config, model, optimizer, autocast


def one_step(train_model, optimizer, loader, autocast, device):
    """One full training step, exactly as train_gpt2.py's loop runs it; its time in seconds."""
    t0 = time.perf_counter()
    train_gpt2.train_step(train_model, optimizer, loader, 1, autocast, device, 6e-4, 1.0)
    optimizer.step()
    train_gpt2.sync(device)
    return time.perf_counter() - t0


def run(args, modes):
    """Interleaved timed steps of each mode; a dict of results per mode."""
    config, model, optimizer, autocast = build(args)
    models = {"eager": model, "compiled": torch.compile(model, dynamic=False)}
    res = {m: {"times": [], "rss": []} for m in modes}
    with tempfile.TemporaryDirectory() as data_dir:
        steps = len(modes) * (args.warmup + args.steps)
        make_data(data_dir, args.batch_size * args.seq_len * (steps + 2) + 1)
        loader = train_gpt2.DataLoaderLite(args.batch_size, args.seq_len, 0, 1, "train", data_dir)
        for i in range(args.warmup + args.steps):
            for m in modes:
                rss_window = reset_peak_rss()
                t = one_step(models[m], optimizer, loader, autocast, args.device)
                if i == 0:
                    res[m]["first_step_s"] = t  # includes compilation
                if i >= args.warmup:
                    res[m]["times"].append(t)
                    res[m]["rss"].append(peak_rss_gb() if rss_window else None)
        # the data loader alone, for the same number of batches
        loader.reset()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loader.next_batch()
        t_data = (time.perf_counter() - t0) / args.steps
    tokens = args.batch_size * args.seq_len
    flops_token = train_gpt2.flops_per_token(config, args.seq_len)
    for m, r in res.items():
        r["step_s"] = statistics.median(r["times"])
        r["tokens_per_s"] = tokens / r["step_s"]
        r["flops_per_s"] = flops_token * tokens / r["step_s"]
        r["data_s"] = t_data
        r["max_rss_gb"] = max(r["rss"]) if None not in r["rss"] else peak_rss_gb()
    return config, model.num_params(), flops_token, res


def profile(args, modes):
    """Where the step's time goes in each mode, by kind of op (self time, so nothing counts twice)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    config, model, optimizer, autocast = build(args)
    models = {"eager": model, "compiled": torch.compile(model, dynamic=False)}
    vocab = config.vocab_size
    with tempfile.TemporaryDirectory() as data_dir:
        make_data(data_dir, args.batch_size * args.seq_len * 3 * len(modes) + 1)
        loader = train_gpt2.DataLoaderLite(args.batch_size, args.seq_len, 0, 1, "train", data_dir)
        for mode in modes:
            for _ in range(2):  # warm-up (and compilation)
                one_step(models[mode], optimizer, loader, autocast, args.device)
            with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                one_step(models[mode], optimizer, loader, autocast, args.device)
            buckets, total = {}, 0.0
            for e in prof.key_averages(group_by_input_shape=True):
                t = e.self_cpu_time_total / 1e6
                total += t
                name, shapes = e.key, str(e.input_shapes)
                if "scaled_dot_product" in name or "flash_attention" in name:
                    kind = "attention (SDPA forward and backward)"
                elif name in ("aten::mm", "aten::addmm", "aten::bmm") and str(vocab) in shapes:
                    kind = "lm_head matmuls"
                elif name in ("aten::mm", "aten::addmm", "aten::bmm"):
                    kind = "qkv, attention-out and MLP matmuls"
                elif "CompiledFxGraph" in name:
                    # inductor's generated kernels run inside the graph call: the fused
                    # cross-entropy, GELU, LayerNorm, casts and residual adds
                    kind = "inductor kernels (fused CE, GELU, LN, casts)"
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
            print(f"{mode} step profile, {args.dtype}, batch {args.batch_size} x {args.seq_len}, total self time {total:.2f}s:")
            for kind, t in sorted(buckets.items(), key=lambda kv: -kv[1]):
                print(f"  {kind:46s} {t:7.3f}s  {100 * t / total:5.1f}%")


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
    p.add_argument("--profile", action="store_true", help="print where the step's time goes in each of --modes, and exit")
    args = p.parse_args()
    modes = args.modes.split(",")
    if any(m not in ("eager", "compiled") for m in modes):
        p.error(f"--modes {args.modes}: use eager, compiled or eager,compiled")
    if args.profile:
        return profile(args, modes)

    peak, how = peak_flops(args.device, args.dtype)
    peak_fp32, _ = peak_flops(args.device, "float32") if args.dtype != "float32" else (peak, how)
    config, params, flops_token, results = run(args, modes)
    if how == "measured":
        # measured again after the steps, and the larger kept: a peak that drifted down while we
        # ran would flatter the MFU
        peak = max(peak, peak_flops(args.device, args.dtype)[0])
    print(f"model: n_layer {args.n_layer}, n_head {args.n_head}, n_embd {args.n_embd}, {params:,} parameters; "
          f"batch {args.batch_size} x seq_len {args.seq_len}, {args.dtype}, device {args.device}")
    print(f"FLOPs per token: {flops_token / 1e6:.1f}M (6 * non-wpe parameters + 12 * n_layer * seq_len * n_embd for attention)")
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
