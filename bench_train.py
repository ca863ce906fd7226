"""
Throughput of the real training step (train_gpt2.forward_backward and optimizer_step: forward,
backward, gradient clipping, optimizer.step), eager against torch.compile, for one or several
micro-batch sizes, with MFU against a peak measured in the same run (CPU, MPS) or the datasheet
peak of a GPU.

    python bench_train.py                                   # GPT-2 124M, seq_len 1024, batch 4, bf16
    python bench_train.py --batch_size 2 --dtype float32 --modes compiled
    python bench_train.py --device cuda --modes compiled --batch_size 16,32,64 --out bench.json
    python bench_train.py --profile                         # the torch profiler's op table, eager and compiled
    python bench_train.py --memory_table                    # memory per GPU on paper, for the GPT-2 presets

The step is timed as train_gpt2.py runs it (TF32 on CUDA, autocast and the float16 loss scaler, a
static-shape torch.compile). The modes of one batch size share one model and take turns step by
step, so that a machine whose speed drifts slows both alike and their ratio holds; each batch size
gets a fresh model (its own peak memory: torch.cuda.max_memory_allocated, or the process's peak
RSS), and one that runs out of GPU memory is reported as OOM. memory_estimate's paper figure
stands beside each measurement.
"""

import argparse
import dataclasses
import functools
import gc
import json
import os
import resource
import statistics
import tempfile
import time

import numpy as np
import torch

from common import ArgumentParser, UserError, exit_on_user_error, write_atomic
from device import autocast_and_scaler, configure_tf32, peak_flops, resolve_device, sync
from model import GPT, GPTConfig
from parallel import Dist
from shards import write_manifest, write_shard
from train_args import config_from_args, parse_args
from train_gpt2 import DataLoaderLite, forward_backward, grad_accum_steps_for, optimizer_step

MODES = ("eager", "compiled")


def make_data(data_dir, tokens):
    # random GPT-2 ids: the step's cost does not depend on which tokens they are
    rng = np.random.default_rng(0)
    write_shard(os.path.join(data_dir, "bench_val_000000.bin"), rng.integers(0, 50257, 4096))
    write_shard(os.path.join(data_dir, "bench_train_000001.bin"), rng.integers(0, 50257, tokens))
    write_manifest(data_dir)  # training data is read only with its manifest beside it


# -----------------------------------------------------------------------------
# device decisions, each a small function of what it depends on, so that a CPU test can call it
# with a GPU's values


def resolve(device_arg, cuda_count=None, mps_available=None):
    """(device, device type) for --device: the device device.resolve_device gives (a UserError
    naming the flag for one this machine lacks; cuda_count and mps_available are this machine's
    unless given), and its type, which autocast and the peak table take: 'cuda' for cuda:0."""
    device = resolve_device(device_arg, cuda_count, mps_available)
    return device, torch.device(device).type


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
# memory on paper: what one training step holds per GPU, by part

GiB = 2**30
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}  # of an activation, under autocast or not
# --memory_table: the GPT-2 family of train_args.PRESETS on one node of 8 GPUs, and three cards
MEMORY_TABLE_PRESETS = ("gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1558m")
MEMORY_TABLE_WORLD_SIZE = 8
CARDS_GB = (24, 40, 80)
# a card fits an estimate that leaves a tenth of it free (a card of C GB counted as C GiB): the
# CUDA context and NCCL's buffers are not tensors and are in no estimate, the caching allocator
# fragments, and torch sees a little less than the nominal size
CARD_FILL = 0.9


@functools.lru_cache(maxsize=None)
def _param_counts(config_fields):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = GPT(GPTConfig(*config_fields))
    return model.num_params(), sum(p.numel() for p in model.transformer.h[0].parameters())


def param_counts(config):
    """(parameters of the GPT that config describes, parameters of one of its blocks), counted on
    the model itself; the tied wte/lm_head matrix counts once."""
    return _param_counts(dataclasses.astuple(config))


def activation_parts(config, batch_size, seq_len, dtype, activation_checkpointing):
    """Bytes of activations at the peak of a training step, the start of backward (eager), by
    part. b*s tokens of width h; e bytes per activation element (2 under bf16/fp16 autocast, 4 in
    float32); V the vocabulary.

      blocks     per block and token, what the forward pass keeps for backward: 14h elements in the
                 compute dtype (the inputs of the four linears, h + h + h + 4h; q, k and v, 3h, which
                 SDPA keeps with its output, the attention c_proj's input; GELU's input, 4h) and the
                 two LayerNorms' inputs, 2h in fp32: the residual stream, which autocast leaves in
                 fp32. That is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
                 Transformer Models"), 34 bytes per h for 16-bit activations, less their two dropout
                 masks (our blocks have no dropout), plus 4 for the fp32 LayerNorm inputs; their
                 5*a*s/h term is the (s, s) attention matrix, which SDPA's fused kernels never
                 store. With activation checkpointing each block keeps only its input (4h, fp32).
      head       ln_f's fp32 input and lm_head's input: (4 + e)h per token.
      loss       12*b*s*V: the fp32 log-softmax that cross-entropy keeps, and at the start of
                 backward its incoming gradient and the gradient it computes, three fp32 (b*s, V)
                 tensors. The logits themselves are freed after the forward pass
                 (forward_backward keeps only the loss).
      recompute  with activation checkpointing, one block's full activations while backward
                 recomputes it.

    Left out as too small to matter: the LayerNorms' means and reciprocal deviations, SDPA's
    log-sum-exp, the token ids and targets (tests/test_bench.py counts them on a tiny GPT)."""
    tokens, h, V, L = batch_size * seq_len, config.n_embd, config.vocab_size, config.n_layer
    e = DTYPE_BYTES[dtype]
    block = tokens * h * (14 * e + 2 * 4)
    return {
        "blocks": L * tokens * h * 4 if activation_checkpointing else L * block,
        "head": tokens * h * (4 + e),
        "loss": 12 * tokens * V,
        "recompute": block if activation_checkpointing else 0,
    }


def memory_estimate(config, batch_size, seq_len, dtype="bfloat16", parallel="none", world_size=1,
                    activation_checkpointing=False, grad_accum_steps=1):
    """Bytes per GPU of a training step of train_gpt2.py, by part: params, grads, optimizer,
    activations and their sum, total. A model on paper, of the eager step: torch.compile can only
    lower it (it fuses away some of what eager keeps), and the CUDA context, NCCL's buffers and
    the allocator's fragmentation come on top.

    parallel is "none" (one process), "ddp" or "fsdp" (train_gpt2.py --fsdp) over world_size
    GPUs. N parameters, P of them in one block; the master weights, their gradients and AdamW's
    state are fp32 whatever --dtype says:

      params     4N. Autocast (bf16 or fp16) keeps a 16-bit copy of every weight it multiplies
                 from the forward pass to the backward, 2N more, except under FSDP with bf16,
                 whose working weights are bf16 already. FSDP: 4N/W, plus the working copies
                 of the parameters it has gathered: the root unit's (wte, which is lm_head, wpe,
                 ln_f; gathered for the whole step) and two blocks' (the one computing and the one
                 prefetched), in bf16 under --dtype bfloat16, else fp32.
      grads      4N. DDP adds its all-reduce buckets, 4N more (train_gpt2.py leaves
                 gradient_as_bucket_view off). FSDP: 4N/W, plus one block's gradient before it
                 is reduce-scattered (in the working dtype, and in fp32 for the reduction), plus,
                 when grad_accum_steps > 1, the whole model's fp32 gradient, 4N: forward_backward
                 skips the reduce-scatter before the last micro-step, so it accumulates unsharded.
      optimizer  AdamW's exp_avg and exp_avg_sq: 8N; FSDP: 8N/W.
      activations  activation_parts, summed.

    The sum counts the gradients at the activations' peak, the start of backward, which holds them
    from the second micro-step on; with grad_accum_steps 1 (bench_train.py's step) each backward
    starts without them, so there the sum is high by up to its grads entry."""
    if parallel not in ("none", "ddp", "fsdp"):
        raise ValueError(f"parallel must be none, ddp or fsdp, got {parallel!r}")
    if parallel == "none" and world_size != 1:
        raise ValueError(f"parallel none runs one process, got world_size {world_size}")
    N, P = param_counts(config)
    W = world_size
    autocast = dtype in ("bfloat16", "float16")
    if parallel == "fsdp":
        working = 2 if dtype == "bfloat16" else 4  # apply_fsdp's MixedPrecisionPolicy
        root = N - config.n_layer * P
        params = 4 * N / W + working * (root + 2 * P) + (2 * N if dtype == "float16" else 0)
        # one block's gradient as backward makes it, and its fp32 copy for the reduction (the same
        # tensor when the working dtype is fp32)
        block_grad = P * (4 if working == 4 else working + 4)
        grads = 4 * N / W + block_grad + (4 * N if grad_accum_steps > 1 else 0)
        optimizer = 8 * N / W
    else:
        params = 4 * N + (2 * N if autocast else 0)
        grads = 4 * N + (4 * N if parallel == "ddp" else 0)
        optimizer = 8 * N
    activations = sum(activation_parts(config, batch_size, seq_len, dtype, activation_checkpointing).values())
    out = {"params": params, "grads": grads, "optimizer": optimizer, "activations": activations}
    out["total"] = sum(out.values())
    return out


def memory_table(world_size=MEMORY_TABLE_WORLD_SIZE, presets=MEMORY_TABLE_PRESETS):
    """For each preset, DDP and FSDP over world_size GPUs, without and with activation
    checkpointing: a row of the preset's run (its flags as train_gpt2.py resolves them: preset,
    then the parser's defaults), memory_estimate's parts in bytes, the cards the estimate fits, and
    the largest power-of-two micro-batch that fits each card (None: not even one sequence)."""
    rows = []
    for preset in presets:
        args = parse_args(["--preset", preset])
        config = config_from_args(args)
        N = param_counts(config)[0]
        # the power-of-two micro-batches that split a step evenly, largest first, up to one
        # micro-step per step
        most = args.total_batch_size // (args.seq_len * world_size)
        candidates = [2**k for k in reversed(range(most.bit_length()))
                      if args.total_batch_size % (2**k * args.seq_len * world_size) == 0]
        for parallel in ("ddp", "fsdp"):
            for ac in (False, True):
                def estimate(b):
                    accum = args.total_batch_size // (b * args.seq_len * world_size)
                    return memory_estimate(config, b, args.seq_len, args.dtype, parallel, world_size, ac, accum)

                m = estimate(args.batch_size)
                largest = {}
                for card in CARDS_GB:
                    fitting = [b for b in candidates if estimate(b)["total"] <= CARD_FILL * card * GiB]
                    largest[card] = fitting[0] if fitting else None
                rows.append({
                    "preset": preset, "params_count": N, "parallel": parallel, "activation_checkpointing": ac,
                    "batch_size": args.batch_size, "seq_len": args.seq_len, "dtype": args.dtype,
                    "grad_accum_steps": grad_accum_steps_for(args, world_size),
                    **m, "fits": [c for c in CARDS_GB if m["total"] <= CARD_FILL * c * GiB], "largest_batch_size": largest,
                })
    return rows


def memory_table_markdown(rows, world_size=MEMORY_TABLE_WORLD_SIZE):
    """memory_table's rows as a markdown table, in GiB, under a line that says how to read it."""
    cards = " / ".join(str(c) for c in CARDS_GB)
    lines = [
        f"Per GPU on {world_size} GPUs, GiB, eager; the preset's micro-batch B and gradient accumulation; "
        f"a card of C GB fits when the total is at most {CARD_FILL:.0%} of C GiB.",
        "",
        f"| preset | parameters | parallel | act. ckpt | B | accum | params | grads | optimizer | activations | "
        f"total | fits | largest B on {cards} GB |",
        "|---|--:|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for r in rows:
        largest = " / ".join(str(b) if b else "-" for b in r["largest_batch_size"].values())
        lines.append(
            f"| {r['preset']} | {r['params_count'] / 1e6:,.1f}M | {r['parallel'].upper()} | "
            f"{'yes' if r['activation_checkpointing'] else 'no'} | {r['batch_size']} | {r['grad_accum_steps']} | "
            + " | ".join(f"{r[k] / GiB:.2f}" for k in ("params", "grads", "optimizer", "activations"))
            + f" | **{r['total'] / GiB:.2f}** | {', '.join(map(str, r['fits'])) or 'none'} | {largest} |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# timing


def build(args, device_type):
    torch.manual_seed(0)
    config = GPTConfig(block_size=args.seq_len, vocab_size=50304, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config).to(args.device)
    model.activation_checkpointing = args.activation_checkpointing
    optimizer = model.configure_optimizers(0.1, 6e-4, device_type)
    return model, optimizer, *autocast_and_scaler(device_type, args.dtype)


def one_step(train_model, optimizer, scaler, loader, autocast, device):
    """One full training step, exactly as train_gpt2.py's loop runs it; its time in seconds."""
    t0 = time.perf_counter()
    forward_backward(train_model, loader, 1, autocast, scaler, Dist(False, 0, 1, device))
    optimizer_step(optimizer, scaler, 6e-4, 1.0)
    sync(device)
    return time.perf_counter() - t0


def time_batch_size(args, device_type, batch_size, modes, data_dir):
    """Interleaved timed steps of each mode at one batch size, on a fresh model; a dict per mode."""
    # a fresh compilation per batch size, like a fresh training run (and no cache of earlier
    # models' graphs to hit the recompilation limit)
    torch._dynamo.reset()
    model, optimizer, autocast, scaler = build(args, device_type)
    models = {"eager": model, "compiled": torch.compile(model, dynamic=False) if "compiled" in modes else None}
    loader = DataLoaderLite(batch_size, args.seq_len, 0, 1, "train", data_dir)
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


def run(args, device_type, modes, record=None):
    """Every batch size of args.batch_size in turn: a list of result rows (one per batch size and
    mode; an OOM batch size gets one row per mode saying so). record(rows), if given, is called
    with the rows so far after each batch size."""
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
            if record:
                record(rows)
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
            loader = DataLoaderLite(batch_size, args.seq_len, 0, 1, "train", data_dir)
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
    a("--activation_checkpointing", action="store_true",
      help="recompute each block's activations in backward instead of storing them, as train_gpt2.py's flag does")
    a("--out", default=None, help="also write the results to this JSON file (default: none, print them only)")
    a("--profile", action="store_true", help="print the profiler's table of one step of each mode and batch size, and exit")
    a("--profile_rows", type=int, default=25, help="rows of each --profile table")
    a("--memory_table", action="store_true",
      help=f"print the paper estimate of memory per GPU for train_gpt2.py's GPT-2 presets on "
           f"{MEMORY_TABLE_WORLD_SIZE} GPUs (DDP and FSDP, with and without activation checkpointing) as "
           f"markdown, and exit; runs nothing")
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
    """Run the benchmark, print the table; the results as a JSON-able dict. --out is written after
    every batch size ("finished": false until the last), so that a run cut short (the GPU check's
    timeout) still leaves the batch sizes it measured."""
    device_name = torch.cuda.get_device_name(args.device) if device_type == "cuda" else None
    peak, how = peak_flops(args.device, args.dtype, device_name, args.peak_matmul_size)
    config = GPTConfig(block_size=args.seq_len, vocab_size=50304, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    with torch.device("meta"):  # the sizes alone, no memory
        shape = GPT(config)
    params, flops_token = shape.num_params(), shape.flops_per_token(args.seq_len)
    # the paper estimate of each batch size, beside its measured peak: one GPU, no DDP, one
    # micro-step per step, as timed here
    estimates = {b: {k: v / GiB for k, v in memory_estimate(config, b, args.seq_len, args.dtype, "none", 1,
                                                           args.activation_checkpointing).items()}
                 for b in args.batch_size}
    memory_total = torch.cuda.get_device_properties(args.device).total_memory / 2**30 if device_type == "cuda" else None
    results = {
        "device": args.device, "device_name": device_name, "memory_total_gb": memory_total,
        "torch": torch.__version__, "dtype": args.dtype, "seq_len": args.seq_len,
        "activation_checkpointing": args.activation_checkpointing,
        "model": {"n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd, "params": params},
        "flops_per_token": flops_token, "peak_flops": peak, "peak_how": how,
        "steps": args.steps, "warmup": args.warmup, "finished": False, "rows": [],
    }

    def record(rows):
        for r in rows:
            r["memory_estimate_gb"] = estimates[r["batch_size"]]
            if not r["oom"]:
                r["mfu"] = r["flops_per_s"] / results["peak_flops"] if results["peak_flops"] else None
        results["rows"] = rows
        if args.out:
            write_atomic(args.out, (json.dumps(results, indent=1) + "\n").encode())

    rows = run(args, device_type, modes, record)
    if how == "measured":
        # measured again after the steps, and the larger kept: a peak that drifted down while we
        # ran would flatter the MFU
        peak = results["peak_flops"] = max(peak, peak_flops(args.device, args.dtype, matmul_size=args.peak_matmul_size)[0])
    results["finished"] = True
    record(rows)
    where = args.device + (f" ({device_name}, {memory_total:.1f} GiB)" if device_type == "cuda" else "")
    print(f"model: n_layer {args.n_layer}, n_head {args.n_head}, n_embd {args.n_embd}, {params:,} parameters; "
          f"seq_len {args.seq_len}, {args.dtype}, activation checkpointing {'on' if args.activation_checkpointing else 'off'}, "
          f"device {where}, torch {torch.__version__}")
    print(f"FLOPs per token: {flops_token / 1e6:.1f}M (6 * non-wpe parameters + 12 * n_layer * seq_len * n_embd for attention)")
    print(f"peak {args.dtype}: " + (f"{peak / 1e12:.3f} TFLOP/s ({how})" if peak else f"n/a ({how})"))
    mem = "peak GPU mem" if device_type == "cuda" else "peak RSS"
    print("memory estimate: memory_estimate of the eager step (a compiled one may hold less) on one device, no DDP; "
          + ("the measured peak is of tensors, without the CUDA context" if device_type == "cuda"
             else f"the {mem} measured here also holds the process's own memory"))
    print(f"{'batch':>5s} {'mode':9s} {'step (median)':>14s} {'first step':>11s} {'tokens/s':>10s} {'TFLOP/s':>9s} "
          f"{'MFU':>6s} {'data/step':>10s} {mem:>12s} {'estimate':>10s}")
    for r in rows:
        estimate = f"{r['memory_estimate_gb']['total']:7.2f}GiB"
        if r["oom"]:
            print(f"{r['batch_size']:5d} {r['mode']:9s} OOM: {r['oom'][:100]} (estimate {estimate.strip()})")
            continue
        print(f"{r['batch_size']:5d} {r['mode']:9s} {r['step_s'] * 1000:12.1f}ms {r['first_step_s']:10.1f}s "
              f"{r['tokens_per_s']:10.0f} {r['flops_per_s'] / 1e12:9.3f} {mfu_text(r['flops_per_s'], peak, how):>6s} "
              f"{100 * r['data_fraction']:9.3f}% {r['peak_memory_gb']:9.2f}GiB {estimate:>10s}")
    for batch_size in args.batch_size:
        t = {r["mode"]: r.get("tokens_per_s") for r in rows if r["batch_size"] == batch_size}
        if t.get("eager") and t.get("compiled"):
            print(f"compiled / eager tokens/s at batch {batch_size}: {t['compiled'] / t['eager']:.2f}x")
    return results


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.memory_table:
        rows = memory_table()
        print(memory_table_markdown(rows))
        return rows
    device_type = check_args(args)
    # matmuls as the training run does them: TF32 for float32 on CUDA
    configure_tf32(device_type)
    modes = [m for m in MODES if m in args.modes]  # eager first, whatever the order given
    if args.profile:
        return profile(args, device_type, modes)
    return report(args, device_type, modes)


if __name__ == "__main__":
    exit_on_user_error("bench_train.py", main)
