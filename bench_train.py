"""
Throughput of the real training step (train_gpt2.train_step: forward, backward, gradient
clipping, plus optimizer.step), eager against torch.compile, for one or several micro-batch sizes,
with MFU against a peak measured in the same run (CPU, MPS) or the datasheet peak of a GPU.

    python bench_train.py                                   # GPT-2 124M, seq_len 1024, batch 4, bf16
    python bench_train.py --batch_size 2 --dtype float32 --modes compiled
    python bench_train.py --device cuda --modes compiled --batch_size 16,32,64 --out bench.json
    python bench_train.py --profile                         # the torch profiler's op table, eager and compiled

The step is timed as train_gpt2.py runs it: TF32 on for float32 matmuls on CUDA
(train_gpt2.configure_tf32), autocast for --dtype bfloat16 or float16 (with the loss scaler for
float16), a static-shape torch.compile.
The modes of one batch size share one model and one process and take turns step by step (eager,
compiled, eager, ...), so that a machine whose speed drifts (a shared CPU, a GPU warming up) slows
both alike and their ratio holds. Each batch size gets a fresh model and optimizer, so that its peak
memory is its own, and a batch size that runs out of GPU memory is reported as OOM and the next one
is still timed. Peak memory is read per step: on CUDA torch.cuda.max_memory_allocated (reset before
each step), elsewhere the process's peak RSS (Linux: VmHWM after resetting it through
/proc/self/clear_refs).
"""

import argparse
import gc
import json
import os
import resource
import statistics
import tempfile
import time

import numpy as np
import torch

import fineweb
import train_gpt2
from model import GPT, ArgumentParser, GPTConfig, UserError, exit_on_user_error, resolve_device

MODES = ("eager", "compiled")


def make_data(data_dir, tokens):
    # random GPT-2 ids: the step's cost does not depend on which tokens they are
    rng = np.random.default_rng(0)
    fineweb.write_shard(os.path.join(data_dir, "bench_val_000000.bin"), rng.integers(0, 50257, 4096))
    fineweb.write_shard(os.path.join(data_dir, "bench_train_000001.bin"), rng.integers(0, 50257, tokens))
    fineweb.write_manifest(data_dir)  # training data is read only with its manifest beside it


# -----------------------------------------------------------------------------
# device decisions, each a small function of what it depends on, so that a CPU test can call it
# with a GPU's values


def resolve(device_arg, cuda_count=None, mps_available=None):
    """(device, device type) for --device: the device model.resolve_device gives (a UserError
    naming the flag for one this machine lacks; cuda_count and mps_available are this machine's
    unless given), and its type, which autocast and the peak table take: 'cuda' for cuda:0."""
    device = resolve_device(device_arg, cuda_count, mps_available)
    return device, torch.device(device).type


def peak_flops(device, dtype, device_name=None, matmul_size=4096):
    """(peak FLOP/s or None, how it was found). A GPU's is its datasheet peak, by the name torch
    reports for it (device_name; read from the device if not given), and None for a card that
    train_gpt2's table does not know. Any other device's is measured: the best of a few square
    matmuls of side matmul_size."""
    if torch.device(device).type == "cuda":
        name = device_name or torch.cuda.get_device_name(device)
        peak = train_gpt2.gpu_peak_flops(name, dtype)
        return peak, ("datasheet" if peak is not None else f"unknown GPU: {name}")
    return train_gpt2.measure_peak_flops(device, dtype, n=matmul_size), "measured"


def mfu_text(flops_per_s, peak, how):
    """MFU as a percentage, or why there is none."""
    return f"{100 * flops_per_s / peak:.1f}%" if peak else f"n/a ({how})"


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


def reset_peak_memory(device_type, device):
    """Start a new peak-memory window; False where none can be started (the figure then covers
    the whole process so far)."""
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return reset_peak_rss()


def peak_memory_gb(device_type, device):
    """GiB: on CUDA the tensors' peak on the GPU (what decides whether a batch fits), elsewhere
    the process's peak RSS."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gb()


def release_memory(device_type):
    """Give the memory of a finished (or failed) batch size back, so the next one starts clean."""
    gc.collect()
    if device_type == "cuda":
        torch.cuda.empty_cache()


# -----------------------------------------------------------------------------
# timing


def build(args, device_type):
    torch.manual_seed(0)
    config = GPTConfig(block_size=args.seq_len, vocab_size=50304, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config).to(args.device)
    optimizer = model.configure_optimizers(0.1, 6e-4, device_type)
    autocast = torch.autocast(device_type, dtype=getattr(torch, args.dtype), enabled=args.dtype != "float32")
    # as in training: float16 scales the loss so that small gradients do not underflow; disabled,
    # the scaler passes everything through
    scaler = torch.amp.GradScaler(device_type, enabled=args.dtype == "float16")
    return model, optimizer, autocast, scaler


def one_step(train_model, optimizer, scaler, loader, autocast, device):
    """One full training step, exactly as train_gpt2.py's loop runs it; its time in seconds."""
    t0 = time.perf_counter()
    for group in optimizer.param_groups:
        group["lr"] = 6e-4
    train_gpt2.train_step(train_model, optimizer, loader, 1, autocast, device, 1.0, scaler)
    scaler.step(optimizer)  # optimizer.step(), through float16's overflow check
    scaler.update()
    train_gpt2.sync(device)
    return time.perf_counter() - t0


def time_batch_size(args, device_type, batch_size, modes, data_dir):
    """Interleaved timed steps of each mode at one batch size, on a fresh model; a dict per mode."""
    # a fresh compilation per batch size, like a fresh training run (and no cache of earlier
    # models' graphs to hit the recompilation limit)
    torch._dynamo.reset()
    model, optimizer, autocast, scaler = build(args, device_type)
    models = {"eager": model, "compiled": torch.compile(model, dynamic=False) if "compiled" in modes else None}
    loader = train_gpt2.DataLoaderLite(batch_size, args.seq_len, 0, 1, "train", data_dir)
    res = {m: {"times": [], "memory": []} for m in modes}
    for i in range(args.warmup + args.steps):
        for m in modes:
            window = reset_peak_memory(device_type, args.device)
            t = one_step(models[m], optimizer, scaler, loader, autocast, args.device)
            if i == 0:
                res[m]["first_step_s"] = t  # includes compilation
            if i >= args.warmup:
                res[m]["times"].append(t)
                res[m]["memory"].append(peak_memory_gb(device_type, args.device) if window else None)
    # the data loader alone, for the same number of batches
    loader.reset()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loader.next_batch()
    t_data = (time.perf_counter() - t0) / args.steps
    tokens = batch_size * args.seq_len
    flops_token = model.flops_per_token(args.seq_len)
    out = {}
    for m, r in res.items():
        step_s = statistics.median(r["times"])
        out[m] = {
            "step_s": step_s,
            "first_step_s": r["first_step_s"],
            "tokens_per_s": tokens / step_s,
            "flops_per_s": flops_token * tokens / step_s,
            "data_fraction": t_data / step_s,
            "peak_memory_gb": max(r["memory"]) if None not in r["memory"] else peak_memory_gb(device_type, args.device),
        }
    return out


def run(args, device_type, modes):
    """Every batch size of args.batch_size in turn: a list of result rows (one per batch size and
    mode; an OOM batch size gets one row per mode saying so)."""
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        steps = len(modes) * (args.warmup + args.steps)
        make_data(data_dir, max(args.batch_size) * args.seq_len * (steps + 2) + 1)
        for batch_size in args.batch_size:
            try:
                res = time_batch_size(args, device_type, batch_size, modes, data_dir)
                rows += [{"batch_size": batch_size, "mode": m, "oom": None, **r} for m, r in res.items()]
            except torch.cuda.OutOfMemoryError as e:  # the class torch.OutOfMemoryError names too
                first_line = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
                rows += [{"batch_size": batch_size, "mode": m, "oom": first_line} for m in modes]
            # after the except clause, whose traceback held the failed step's tensors
            release_memory(device_type)
    return rows


def profile(args, device_type, modes):
    """The torch profiler's table of one step per batch size and mode, ops by self time. Its rows
    are grouped by input shape, so the lm_head's matmuls (their shapes have the vocabulary size,
    50304) show apart from the blocks' ones; inductor's fused kernels show as CompiledFxGraph."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device_type == "cuda" else "self_cpu_time_total"
    with tempfile.TemporaryDirectory() as data_dir:
        make_data(data_dir, max(args.batch_size) * args.seq_len * 3 * len(modes) + 1)
        for batch_size in args.batch_size:
            torch._dynamo.reset()
            model, optimizer, autocast, scaler = build(args, device_type)
            models = {"eager": model, "compiled": torch.compile(model, dynamic=False)}
            loader = train_gpt2.DataLoaderLite(batch_size, args.seq_len, 0, 1, "train", data_dir)
            for mode in modes:
                for _ in range(2):  # warm-up (and compilation)
                    one_step(models[mode], optimizer, scaler, loader, autocast, args.device)
                with torch_profile(activities=activities, record_shapes=True) as prof:
                    one_step(models[mode], optimizer, scaler, loader, autocast, args.device)
                print(f"{mode} step, batch {batch_size} x {args.seq_len}, {args.dtype} on {args.device}, "
                      f"the {args.profile_rows} ops of most self time:")
                print(prof.key_averages(group_by_input_shape=True).table(sort_by=sort_by, row_limit=args.profile_rows))


# -----------------------------------------------------------------------------
# command line


def comma_list(kind, choices=None):
    """An argparse type: a comma-separated list of kind (positive, for ints; one of choices)."""

    def parse(text):
        items = [s.strip() for s in text.split(",")]
        try:
            values = [kind(s) for s in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated {kind.__name__}s") from None
        if kind is int and any(v < 1 for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 1")
        if choices and any(v not in choices for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: use {', '.join(choices)} or a comma-separated list of them")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{text!r}: a value is repeated")
        return values

    return parse


def get_parser():
    p = ArgumentParser("bench_train.py", __doc__)
    a = p.add_argument
    a("--n_layer", type=int, default=12, help="transformer blocks of the benchmarked GPT")
    a("--n_head", type=int, default=12, help="attention heads per block")
    a("--n_embd", type=int, default=768, help="width of the residual stream (divisible by --n_head)")
    a("--batch_size", type=comma_list(int), default="4",
      help="sequences per micro-step; a comma-separated list (16,32,64) times each in turn")
    a("--seq_len", type=int, default=1024, help="tokens per sequence (also the model's block_size)")
    a("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
      help="bfloat16 autocast, float16 autocast with a loss scaler, or plain float32 (TF32 matmuls on CUDA); "
           "as in training")
    a("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    a("--modes", type=comma_list(str, MODES), default=",".join(MODES), help="comma-separated: eager, compiled")
    a("--steps", type=int, default=5, help="timed steps per mode and batch size (the median is reported)")
    a("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    a("--peak_matmul_size", type=int, default=4096,
      help="side of the square matmuls that measure a CPU's (or MPS's) peak FLOP/s; smaller is faster "
           "but may measure a lower peak")
    a("--out", default=None, help="also write the results to this JSON file (default: none, print them only)")
    a("--profile", action="store_true", help="print the profiler's table of one step of each mode and batch size, and exit")
    a("--profile_rows", type=int, default=25, help="rows of each --profile table")
    return p


def check_args(args):
    """Validate the flags once; sets args.device to the device it resolves to, returns its type."""
    for name in ("n_layer", "n_head", "n_embd", "seq_len", "steps", "peak_matmul_size", "profile_rows"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if args.n_embd % args.n_head:
        raise UserError(f"--n_embd {args.n_embd} is not divisible by --n_head {args.n_head}")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UserError(f"--out {args.out}: its folder does not exist")
    args.device, device_type = resolve(args.device)
    return device_type


def report(args, device_type, modes):
    """Run the benchmark, print the table; the results as a JSON-able dict."""
    device_name = torch.cuda.get_device_name(args.device) if device_type == "cuda" else None
    peak, how = peak_flops(args.device, args.dtype, device_name, args.peak_matmul_size)
    rows = run(args, device_type, modes)
    if how == "measured":
        # measured again after the steps, and the larger kept: a peak that drifted down while we
        # ran would flatter the MFU
        peak = max(peak, peak_flops(args.device, args.dtype, matmul_size=args.peak_matmul_size)[0])
    config = GPTConfig(block_size=args.seq_len, vocab_size=50304, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    with torch.device("meta"):  # the sizes alone, no memory
        shape = GPT(config)
    params, flops_token = shape.num_params(), shape.flops_per_token(args.seq_len)
    memory_total = torch.cuda.get_device_properties(args.device).total_memory / 2**30 if device_type == "cuda" else None
    where = args.device + (f" ({device_name}, {memory_total:.1f} GiB)" if device_type == "cuda" else "")
    print(f"model: n_layer {args.n_layer}, n_head {args.n_head}, n_embd {args.n_embd}, {params:,} parameters; "
          f"seq_len {args.seq_len}, {args.dtype}, device {where}, torch {torch.__version__}")
    print(f"FLOPs per token: {flops_token / 1e6:.1f}M (6 * non-wpe parameters + 12 * n_layer * seq_len * n_embd for attention)")
    print(f"peak {args.dtype}: " + (f"{peak / 1e12:.3f} TFLOP/s ({how})" if peak else f"n/a ({how})"))
    mem = "peak GPU mem" if device_type == "cuda" else "peak RSS"
    print(f"{'batch':>5s} {'mode':9s} {'step (median)':>14s} {'first step':>11s} {'tokens/s':>10s} {'TFLOP/s':>9s} "
          f"{'MFU':>6s} {'data/step':>10s} {mem:>12s}")
    for r in rows:
        if r["oom"]:
            print(f"{r['batch_size']:5d} {r['mode']:9s} OOM: {r['oom'][:100]}")
            continue
        r["mfu"] = r["flops_per_s"] / peak if peak else None
        print(f"{r['batch_size']:5d} {r['mode']:9s} {r['step_s'] * 1000:12.1f}ms {r['first_step_s']:10.1f}s "
              f"{r['tokens_per_s']:10.0f} {r['flops_per_s'] / 1e12:9.3f} {mfu_text(r['flops_per_s'], peak, how):>6s} "
              f"{100 * r['data_fraction']:9.3f}% {r['peak_memory_gb']:9.2f}GiB")
    for batch_size in args.batch_size:
        t = {r["mode"]: r.get("tokens_per_s") for r in rows if r["batch_size"] == batch_size}
        if t.get("eager") and t.get("compiled"):
            print(f"compiled / eager tokens/s at batch {batch_size}: {t['compiled'] / t['eager']:.2f}x")
    results = {
        "device": args.device, "device_name": device_name, "memory_total_gb": memory_total,
        "torch": torch.__version__, "dtype": args.dtype, "seq_len": args.seq_len,
        "model": {"n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd, "params": params},
        "flops_per_token": flops_token, "peak_flops": peak, "peak_how": how,
        "steps": args.steps, "warmup": args.warmup, "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
    return results


def main(argv=None):
    args = get_parser().parse_args(argv)
    device_type = check_args(args)
    # matmuls as the training run does them: TF32 for float32 on CUDA
    train_gpt2.configure_tf32(device_type)
    modes = [m for m in MODES if m in args.modes]  # eager first, whatever the order given
    if args.profile:
        return profile(args, device_type, modes)
    return report(args, device_type, modes)


if __name__ == "__main__":
    exit_on_user_error("bench_train.py", main)
