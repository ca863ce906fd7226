"""
Train GPT-2 (124M by default) on FineWeb-Edu token shards, with build-nanogpt's recipe.

The small run on CPU, offline, on the embedded corpus (prepared on first use):

    python train_gpt2.py --preset cpu

GPT-2 124M on 10B tokens of FineWeb-Edu (make the shards first with fineweb.py):

    python fineweb.py                                              # -> edu_fineweb10B/
    torchrun --standalone --nproc_per_node=8 train_gpt2.py         # one node, 8 GPUs
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train_gpt2.py

Resume the newest checkpoint in --log_dir, or a given one:

    torchrun --standalone --nproc_per_node=8 train_gpt2.py --resume
    python train_gpt2.py --resume log/model_05000.pt

Every flag is listed by --help. Outputs in --log_dir: log.jsonl (one JSON object per event),
loss.png (train/val loss and HellaSwag), model_XXXXX.pt checkpoints.
"""

import argparse
import contextlib
import glob
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from fineweb import ShardError, load_shard
from model import GPT, GPTConfig, get_tokenizer, generate

# -----------------------------------------------------------------------------
# data loader


def find_shards(data_dir, split):
    """Sorted shard paths of one split ('train' or 'val') in data_dir, as fineweb.py names them."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"--data_dir {data_dir} does not exist; make shards with fineweb.py "
            f"(python fineweb.py --out_dir {data_dir})"
        )
    shards = sorted(glob.glob(os.path.join(data_dir, f"*_{split}_*.bin")))
    if not shards:
        raise FileNotFoundError(
            f"--data_dir {data_dir} has no {split} shards (*_{split}_*.bin); make them with fineweb.py"
        )
    return shards


class DataLoaderLite:
    """(B, T) batches from token shards. Rank r of W reads chunks r, r+W, r+2W, ... of B*T tokens
    (plus one for the shifted targets), so the W ranks together read exactly what one process
    would read in W consecutive calls."""

    def __init__(self, B, T, process_rank, num_processes, split, data_dir):
        self.B, self.T = B, T
        self.process_rank, self.num_processes = process_rank, num_processes
        self.shards = find_shards(data_dir, split)
        # check every shard up front: a bad file should fail at start-up, not hours in
        need = B * T * num_processes + 1
        for path in self.shards:
            ntok = len(load_shard(path))
            if ntok < need:
                raise ShardError(
                    f"shard {path} has {ntok} tokens, fewer than batch_size*seq_len*world_size + 1 "
                    f"= {B}*{T}*{num_processes} + 1 = {need} needed for one step; regenerate it with "
                    f"fineweb.py with a larger --shard_size (or --val_tokens), or lower --batch_size/--seq_len"
                )
        self.reset()

    def reset(self):
        self._seek(0, 0)

    def _seek(self, shard, step_start):
        # step_start is where the current step's chunks begin; this rank reads at an offset of
        # process_rank chunks from it
        self.current_shard = shard
        self.tokens = load_shard(self.shards[shard])
        self.current_position = step_start + self.B * self.T * self.process_rank

    def state_dict(self):
        """Where the next step starts, the same on every rank; load_state_dict continues exactly."""
        return {"shard": self.current_shard, "position": self.current_position - self.B * self.T * self.process_rank}

    def load_state_dict(self, state):
        if not 0 <= state["shard"] < len(self.shards):
            raise ValueError(
                f"data loader state points at shard {state['shard']} but {len(self.shards)} shards exist; "
                f"was the data directory regenerated since the checkpoint?"
            )
        # the step must fit as next_batch leaves it: a position saved with another batch_size,
        # seq_len or world_size (or from other shards) would otherwise fail later inside a reshape
        need = self.B * self.T * self.num_processes + 1
        ntok = len(load_shard(self.shards[state["shard"]]))
        if not 0 <= state["position"] <= ntok - need:
            raise ValueError(
                f"data loader state: position {state['position']} in shard {self.shards[state['shard']]} "
                f"({ntok} tokens) leaves no room for a step of {need} tokens; resume with the batch_size, "
                f"seq_len and world_size (number of processes) of the checkpoint's run, on the same shards"
            )
        self._seek(state["shard"], state["position"])

    def next_batch(self):
        B, T = self.B, self.T
        chunk = self.tokens[self.current_position : self.current_position + B * T + 1]
        buf = torch.from_numpy(chunk.astype(np.int64))
        x = buf[:-1].view(B, T)  # inputs
        y = buf[1:].view(B, T)  # targets: the next token at every position
        self.current_position += B * T * self.num_processes
        # move on when the next step's chunks (of all ranks, so that the ranks switch together)
        # would run past the end of the shard; the tail that cannot fill a whole step is skipped,
        # and after the last shard we wrap around to the first
        step_start = self.current_position - B * T * self.process_rank
        if step_start + B * T * self.num_processes + 1 > len(self.tokens):
            self._seek((self.current_shard + 1) % len(self.shards), 0)
        return x, y


# -----------------------------------------------------------------------------
# learning rate schedule and FLOPs


def get_lr(step, max_lr, min_lr, warmup_steps, max_steps):
    """Linear warmup over warmup_steps, then cosine decay from max_lr to min_lr at max_steps."""
    if step < warmup_steps:
        # (step + 1): the very first step already gets a non-zero learning rate
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    decay_ratio = (step - warmup_steps) / (max_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return min_lr + coeff * (max_lr - min_lr)


def flops_per_token(config, seq_len):
    """Training FLOPs per token: 6 per parameter of the matmuls (2 forward, 4 backward), plus
    attention's QK^T and AV, 6 * 2 * n_layer * seq_len * n_embd (the PaLM paper's appendix B
    formula). The position embedding is a lookup, so its parameters do no FLOPs; the token
    embedding's do, as the lm_head that it is tied to."""
    V, C, L = config.vocab_size, config.n_embd, config.n_layer
    n = V * C + L * (12 * C * C + 13 * C) + 2 * C  # every parameter but wpe's
    return 6 * n + 12 * L * seq_len * C


# dense (no sparsity) peak FLOP/s from the vendors' datasheets, by the name torch reports
GPU_PEAK_FLOPS = {  # name fragment: {dtype: FLOP/s}
    "H200": {"bfloat16": 989e12, "float32": 494.5e12},  # float32 = TF32 tensor cores
    "H100 PCIe": {"bfloat16": 756e12, "float32": 378e12},
    "H100": {"bfloat16": 989e12, "float32": 494.5e12},  # SXM
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "A10G": {"bfloat16": 70e12, "float32": 35e12},
    "L40S": {"bfloat16": 362e12, "float32": 181e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
    "RTX 4090": {"bfloat16": 165e12, "float32": 82.6e12},
    "RTX 3090": {"bfloat16": 71e12, "float32": 35.6e12},
    "V100": {"bfloat16": 125e12, "float32": 15.7e12},  # no bf16 units: fp16 tensor cores
}


def gpu_peak_flops(device_name, dtype):
    """The datasheet peak of the GPU named device_name, or None for a card not in the table."""
    for fragment in sorted(GPU_PEAK_FLOPS, key=len, reverse=True):  # 'H100 PCIe' before 'H100'
        if fragment in device_name:
            return GPU_PEAK_FLOPS[fragment][dtype]
    return None


def measure_peak_flops(device, dtype, n=4096, repeats=5):
    """FLOP/s of a large square matmul on device, the best of a few: the practical peak of this
    device for this dtype."""
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    best = float("inf")
    for _ in range(repeats + 1):  # the first is warm-up
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    elif str(device).startswith("mps"):
        torch.mps.synchronize()


# -----------------------------------------------------------------------------
# command line

PRESETS = {
    # GPT-2 124M with build-nanogpt's recipe: 19073 steps of 524288 tokens is 10B tokens
    "gpt2-124m": {},
    # a small GPT trained on CPU in minutes on the embedded offline corpus (CPython's docs). With
    # GPT-2's 50257-token vocabulary the lm_head is most of the work, so the step is kept small
    "cpu": dict(
        data_dir="data/pydoc",
        log_dir="log_cpu",
        n_layer=4, n_head=4, n_embd=128, block_size=128,
        batch_size=8, seq_len=128, total_batch_size=1024,
        max_lr=2e-3, warmup_steps=20, max_steps=300,
        eval_every=100, val_steps=4, save_every=300,
        # float32: most CPUs have no bf16 matrix units, and where they do (this project's CI
        # machine) bf16 collapses when another process shares the cores; --dtype bfloat16 opts in.
        # No torch.compile: compiling takes longer than it saves in a run of a few minutes
        device="cpu", dtype="float32", compile=False,
    ),
}


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), default="gpt2-124m", help="a set of defaults; explicit flags override them")
    # data and outputs
    a("--data_dir", default="edu_fineweb10B", help="folder of token shards written by fineweb.py")
    a("--log_dir", default="log", help="where log.jsonl, loss.png and checkpoints go")
    a("--resume", nargs="?", const="latest", default=None, help="continue the newest checkpoint in --log_dir, or the given .pt file")
    a("--init_from", default=None, help="start from GPT-2 weights: gpt2|gpt2-medium|gpt2-large|gpt2-xl or a Hugging Face directory")
    # model
    a("--n_layer", type=int, default=12)
    a("--n_head", type=int, default=12)
    a("--n_embd", type=int, default=768)
    a("--block_size", type=int, default=1024, help="the model's context length")
    a("--vocab_size", type=int, default=50304, help="GPT-2's 50257 padded up to a multiple of 128 for faster matmuls")
    # batch: total_batch_size tokens per optimizer step = batch_size * seq_len * world_size * grad_accum_steps
    a("--batch_size", type=int, default=64, help="sequences per micro-step per process")
    a("--seq_len", type=int, default=1024, help="tokens per sequence")
    a("--total_batch_size", type=int, default=524288, help="tokens per optimizer step (2**19, about 0.5M, as GPT-3 124M)")
    # optimization
    a("--max_lr", type=float, default=6e-4)
    a("--min_lr_ratio", type=float, default=0.1, help="the LR decays to max_lr * min_lr_ratio")
    a("--warmup_steps", type=int, default=715)
    a("--max_steps", type=int, default=19073)
    a("--weight_decay", type=float, default=0.1)
    a("--grad_clip", type=float, default=1.0, help="clip the global gradient norm to this (0: no clipping)")
    a("--stop_at_step", type=int, default=None, help="end the run after this many steps, with a checkpoint, leaving the LR schedule of --max_steps unchanged (continue with --resume)")
    # evaluation, sampling, checkpoints
    a("--eval_every", type=int, default=250, help="validation loss, HellaSwag and samples every this many steps, and at the end")
    a("--val_steps", type=int, default=20, help="batches of validation loss per evaluation")
    a("--hellaswag", action=argparse.BooleanOptionalAction, default=True, help="HellaSwag acc_norm at each evaluation")
    a("--hellaswag_file", default=None, help="a local hellaswag_val.jsonl (default: download into hellaswag.py's cache)")
    a("--hellaswag_limit", type=int, default=None, help="score only the first N HellaSwag examples")
    a("--num_samples", type=int, default=4, help="samples printed at each evaluation (0: none)")
    a("--sample_len", type=int, default=32, help="tokens per sample")
    a("--prompt", default="Hello, I'm a language model,")
    a("--save_every", type=int, default=5000, help="write a checkpoint every this many steps, and at the end")
    # system
    a("--seed", type=int, default=1337)
    a("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, mps or cpu")
    a("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="bfloat16 autocast, or plain float32")
    a("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile the model")
    a("--overwrite", action="store_true", help="start a new run in a --log_dir that has checkpoints of another run")
    a("--log_every", type=int, default=1, help="print a training line every this many steps")
    return p


def parse_args(argv=None):
    parser = get_parser()
    # presets are defaults, so that any explicit flag still wins
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**PRESETS[known.preset])
    return parser.parse_args(argv)


def check_args(args, world_size):
    """Validate the flags once; returns grad_accum_steps."""
    positive = ["n_layer", "n_head", "n_embd", "block_size", "vocab_size", "batch_size", "seq_len",
                "total_batch_size", "max_steps", "eval_every", "val_steps", "save_every", "log_every"]
    for name in positive:
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.warmup_steps < 0 or args.num_samples < 0 or args.sample_len < 0:
        raise ValueError("--warmup_steps, --num_samples and --sample_len must be >= 0")
    if args.max_lr <= 0 or not 0 <= args.min_lr_ratio <= 1:
        raise ValueError(f"--max_lr must be > 0 (got {args.max_lr}) and --min_lr_ratio in [0, 1] (got {args.min_lr_ratio})")
    if args.warmup_steps > args.max_steps:
        raise ValueError(f"--warmup_steps {args.warmup_steps} is more than --max_steps {args.max_steps}")
    if args.stop_at_step is not None and not 0 < args.stop_at_step <= args.max_steps:
        raise ValueError(f"--stop_at_step {args.stop_at_step} must be in [1, --max_steps {args.max_steps}]")
    if args.init_from is None and args.vocab_size < 50257:
        raise ValueError(f"--vocab_size {args.vocab_size} is smaller than GPT-2's tokenizer (50257 tokens)")
    if args.n_embd % args.n_head:
        raise ValueError(f"--n_embd {args.n_embd} is not divisible by --n_head {args.n_head}")
    if args.init_from is None and args.seq_len > args.block_size:
        raise ValueError(f"--seq_len {args.seq_len} is longer than the model's --block_size {args.block_size}")
    tokens_per_micro_step = args.batch_size * args.seq_len * world_size
    if args.total_batch_size % tokens_per_micro_step:
        raise ValueError(
            f"--total_batch_size {args.total_batch_size} is not divisible by --batch_size * --seq_len * "
            f"world_size = {args.batch_size} * {args.seq_len} * {world_size} = {tokens_per_micro_step}; pick "
            f"--total_batch_size as a multiple of {tokens_per_micro_step} or change --batch_size"
        )
    return args.total_batch_size // tokens_per_micro_step


# -----------------------------------------------------------------------------
# checkpoints and logs


def checkpoint_path(log_dir, step):
    return os.path.join(log_dir, f"model_{step:05d}.pt")


def latest_checkpoint(log_dir):
    """The checkpoint with the highest step in log_dir, or None."""
    found = []
    for path in glob.glob(os.path.join(log_dir, "model_*.pt")):
        m = re.fullmatch(r"model_(\d+)\.pt", os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


def save_checkpoint(path, state):
    """torch.save to a temporary name, then an atomic rename: a crash or Ctrl-C mid-write leaves
    the previous checkpoints intact and never a half-written file under a checkpoint's name."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def rng_state():
    # numpy's state is stored as plain tensors and numbers so that torch.load(weights_only=True)
    # accepts it
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Logger:
    """log.jsonl in log_dir, one object per event; written by rank 0 only."""

    def __init__(self, log_dir, resume_step=None):
        self.path = os.path.join(log_dir, "log.jsonl")
        if resume_step is None:
            open(self.path, "w").close()
        elif os.path.exists(self.path):
            # drop what the interrupted run logged after its checkpoint: the resumed run logs
            # those steps again
            with open(self.path) as f:
                events = [json.loads(line) for line in f if line.strip()]
            keep = [e for e in events if e["step"] < resume_step or (e["step"] == resume_step and "train_loss" not in e)]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(e) + "\n" for e in keep)

    def log(self, **event):
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")


def plot_log(log_path, png_path, baselines):
    """Train/val loss and HellaSwag acc_norm from log.jsonl into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    with open(log_path) as f:
        events = [json.loads(line) for line in f if line.strip()]
    train = [(e["step"], e["train_loss"]) for e in events if "train_loss" in e]
    val = [(e["step"], e["val_loss"]) for e in events if "val_loss" in e]
    hella = [(e["step"], e["hellaswag_acc_norm"]) for e in events if "hellaswag_acc_norm" in e]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    if train:
        ax1.plot(*zip(*train), label="train loss", lw=0.8)
    if val:
        ax1.plot(*zip(*val), label="val loss", marker="o", ms=3)
    if baselines:
        ax1.axhline(3.2924, color="r", ls="--", label="OpenAI GPT-2 (124M) val loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_title("loss")
    ax1.legend()
    if hella:
        ax2.plot(*zip(*hella), label="ours", marker="o", ms=3)
    if baselines:
        ax2.axhline(0.2955, color="r", ls="--", label="OpenAI GPT-2 (124M)")
    ax2.set_xlabel("step")
    ax2.set_ylabel("acc_norm")
    ax2.set_title("HellaSwag")
    if hella or baselines:
        ax2.legend()
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, png_path)


# -----------------------------------------------------------------------------
# the run


def setup_distributed(device_arg):
    """(ddp, rank, local_rank, world_size, device) from torchrun's environment."""
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if device_arg == "auto":
        if torch.cuda.is_available():
            device_arg = "cuda"
        elif hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
            device_arg = "mps"
        else:
            device_arg = "cpu"
    if not ddp:
        return False, 0, 0, 1, device_arg
    rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device_arg.startswith("cuda"):
        device = f"cuda:{local_rank}"  # one process per GPU
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=torch.device(device))
    elif device_arg == "cpu":
        device = "cpu"
        dist.init_process_group(backend="gloo")
    else:
        raise ValueError(f"--device {device_arg} is not supported under torchrun: use cuda (NCCL) or cpu (gloo)")
    return True, rank, local_rank, world_size, device


def train_step(model, optimizer, train_loader, grad_accum_steps, autocast, device, lr, grad_clip):
    """Forward and backward over grad_accum_steps micro-batches, gradient clipping, and the LR
    set for the step; the caller checks the loss and calls optimizer.step(). model may be
    DDP-wrapped. Returns the mean loss over micro-steps (and ranks) and the gradient norm."""
    ddp = isinstance(model, DDP)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_accum = torch.zeros((), device=device)
    for micro_step in range(grad_accum_steps):
        x, y = train_loader.next_batch()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # DDP all-reduces gradients during backward; only the last micro-step's backward needs
        # it, so the others run under no_sync (which must be entered before the forward pass)
        last = micro_step == grad_accum_steps - 1
        with (model.no_sync() if ddp and not last else contextlib.nullcontext()):
            with autocast:
                _, loss = model(x, y)
            # the loss is a mean over the micro-batch; dividing by grad_accum_steps makes the
            # summed gradients the mean over the whole batch, as if it were one forward pass
            loss = loss / grad_accum_steps
            loss_accum += loss.detach()
            loss.backward()
    if ddp:
        dist.all_reduce(loss_accum, op=dist.ReduceOp.AVG)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    for group in optimizer.param_groups:
        group["lr"] = lr
    return loss_accum, norm


def main(argv=None):
    args = parse_args(argv)
    ddp, rank, local_rank, world_size, device = setup_distributed(args.device)
    try:
        return train(args, ddp, rank, world_size, device)
    except BaseException:
        if ddp:
            print(f"[rank {rank}] failed", file=sys.stderr, flush=True)
        raise
    finally:
        if ddp and dist.is_initialized():
            dist.destroy_process_group()


def train(args, ddp, rank, world_size, device):
    master = rank == 0  # this process logs, writes checkpoints and prints
    device_type = "cuda" if device.startswith("cuda") else device
    grad_accum_steps = check_args(args, world_size)

    def say(*a):
        if master:
            print(*a, flush=True)

    # ---- data
    if args.preset == "cpu" and not os.path.isdir(args.data_dir):
        # the embedded corpus needs no network: make its shards on first use
        if master:
            from fineweb import prepare_embedded

            say(f"preparing the embedded corpus (CPython's reference docs) in {args.data_dir}")
            prepare_embedded(args.data_dir)
        if ddp:
            dist.barrier()
    train_loader = DataLoaderLite(args.batch_size, args.seq_len, rank, world_size, "train", args.data_dir)
    val_loader = DataLoaderLite(args.batch_size, args.seq_len, rank, world_size, "val", args.data_dir)

    # ---- log dir and resume
    os.makedirs(args.log_dir, exist_ok=True)
    ckpt = None
    if args.resume:
        path = latest_checkpoint(args.log_dir) if args.resume == "latest" else args.resume
        if path is None or not os.path.isfile(path):
            raise FileNotFoundError(
                f"--resume: no checkpoint {'in --log_dir ' + args.log_dir if args.resume == 'latest' else path}; "
                f"start without --resume"
            )
        say(f"resuming from {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    elif latest_checkpoint(args.log_dir) and not args.overwrite:
        raise FileExistsError(
            f"--log_dir {args.log_dir} already has checkpoints of another run ({latest_checkpoint(args.log_dir)}); "
            f"continue it with --resume, or pass --overwrite, or choose another --log_dir"
        )

    # ---- model
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    if ckpt is not None:
        config = GPTConfig(**ckpt["config"])
        model = GPT(config)
        model.load_state_dict(ckpt["model"])
    elif args.init_from:
        model = GPT.from_pretrained(args.init_from)
        config = model.config
    else:
        config = GPTConfig(block_size=args.block_size, vocab_size=args.vocab_size,
                           n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
        model = GPT(config)
    if args.seq_len > config.block_size:
        raise ValueError(f"--seq_len {args.seq_len} is longer than the model's block_size {config.block_size}")
    model.to(device)
    raw_model = model  # unwrapped: what checkpoints store and what generation uses
    if device_type == "cuda":
        # TF32 tensor cores for float32 matmuls (10 bits of mantissa, plenty for training)
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
            torch.backends.cuda.matmul.fp32_precision = "tf32"
        else:  # torch < 2.9
            torch.backends.cuda.matmul.allow_tf32 = True
    eval_model = infer_model = model
    if args.compile:
        # training and validation see one (B, T): a static graph, specialised for that shape.
        # HellaSwag and sampling see many lengths: one graph with dynamic shapes, so a new
        # length is not a new compilation
        model = eval_model = torch.compile(model, dynamic=False)
        infer_model = torch.compile(raw_model, dynamic=True)
    # (eval_model and infer_model are not DDP-wrapped: evaluation needs no gradient sync)
    if ddp:
        model = DDP(model, device_ids=[device] if device_type == "cuda" else None)
    optimizer = raw_model.configure_optimizers(args.weight_decay, args.max_lr, device_type, verbose=master)
    start_step = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        train_loader.load_state_dict(ckpt["train_loader"])
        set_rng_state(ckpt["rng"])
        start_step = ckpt["step"]
    autocast = torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    min_lr = args.max_lr * args.min_lr_ratio
    logger = Logger(args.log_dir, resume_step=start_step if ckpt is not None else None) if master else None

    # ---- throughput accounting: MFU against the datasheet peak of the GPU, or the measured
    # matmul peak of the CPU
    tokens_per_step = args.batch_size * args.seq_len * grad_accum_steps * world_size
    flops_step = flops_per_token(config, args.seq_len) * tokens_per_step
    peak = None
    if device_type == "cuda":
        peak = gpu_peak_flops(torch.cuda.get_device_name(device), args.dtype)
        if peak is not None:
            peak *= world_size
    elif device_type == "cpu" and master:
        # ranks on one CPU share its cores, so the machine's peak is the whole budget
        peak = measure_peak_flops("cpu", args.dtype, n=2048)

    say(f"model: {config}, {raw_model.num_params():,} parameters")
    say(f"total_batch_size {args.total_batch_size} tokens = batch_size {args.batch_size} * seq_len {args.seq_len} "
        f"* world_size {world_size} * grad_accum_steps {grad_accum_steps}")

    # ---- HellaSwag: loaded once; without data (no network, no --hellaswag_file) training goes on
    hella_examples = None
    if args.hellaswag:
        import hellaswag

        ok = torch.zeros(1, device=device)
        if master:
            try:
                hella_examples = hellaswag.load_examples("val", file=args.hellaswag_file, limit=args.hellaswag_limit)
                ok += 1
            except Exception as e:  # no network, no file: say it once, train on
                say(f"HellaSwag is skipped for this run: {e}")
        if ddp:
            dist.broadcast(ok, 0)
            if ok.item() and not master:
                hella_examples = hellaswag.load_examples("val", file=args.hellaswag_file, limit=args.hellaswag_limit)

    enc = get_tokenizer()
    baselines = "fineweb" in os.path.abspath(args.data_dir).lower()

    def evaluate(step):
        model.eval()
        event = {"step": step}
        val_loader.reset()  # the same validation tokens every time
        with torch.no_grad():
            val_loss = torch.zeros((), device=device)
            for _ in range(args.val_steps):
                x, y = val_loader.next_batch()
                x, y = x.to(device), y.to(device)
                with autocast:
                    _, loss = eval_model(x, y)
                val_loss += loss.detach() / args.val_steps
        if ddp:
            dist.all_reduce(val_loss, op=dist.ReduceOp.AVG)
        event["val_loss"] = val_loss.item()
        msg = f"step {step:5d} | val loss {event['val_loss']:.4f}"
        if hella_examples is not None:
            import hellaswag

            counts = hellaswag.evaluate(
                lambda idx: infer_model(idx)[0], hella_examples, device, rank=rank, world_size=world_size,
                autocast_dtype=torch.bfloat16 if args.dtype == "bfloat16" else None,
                # a small model's context can be shorter than a HellaSwag row: the scorer crops it
                block_size=config.block_size,
            )
            c = torch.tensor([counts["n"], counts["num_correct"], counts["num_correct_norm"]], device=device, dtype=torch.long)
            if ddp:
                dist.all_reduce(c)
            n, correct, correct_norm = c.tolist()
            event.update(hellaswag_acc=correct / n, hellaswag_acc_norm=correct_norm / n, hellaswag_n=n)
            msg += f" | HellaSwag acc_norm {correct_norm}/{n} = {correct_norm / n:.4f}"
        if master and args.num_samples:
            # rank 0 alone: sampling needs no other rank, so no rank waits on a collective
            prompt = torch.tensor(enc.encode_ordinary(args.prompt), dtype=torch.long, device=device)
            idx = prompt.unsqueeze(0).repeat(args.num_samples, 1)  # (num_samples, T)
            gen = torch.Generator(device=device).manual_seed(42)
            with autocast:
                out = generate(infer_model, idx, args.sample_len, top_k=50, generator=gen, block_size=config.block_size)
            event["samples"] = [enc.decode(row.tolist()) for row in out]
        say(msg)
        if master:
            for text in event.get("samples", []):
                say(f"sample: {text!r}")
            logger.log(**event)
            plot_log(logger.path, os.path.join(args.log_dir, "loss.png"), baselines)
        return event["val_loss"]

    def save(step, val_loss):
        if not master:
            return
        path = checkpoint_path(args.log_dir, step)
        save_checkpoint(path, {
            "model": raw_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "config": asdict(config),
            "args": vars(args),
            "train_loader": train_loader.state_dict(),
            "rng": rng_state(),
            "val_loss": val_loss,
        })
        say(f"saved {path}")

    # ---- the loop. `step` counts the optimizer steps done so far: evaluation and checkpoints at
    # step s see the weights after s updates
    end_step = args.stop_at_step or args.max_steps
    losses = []
    val_loss = ckpt["val_loss"] if ckpt is not None else None
    t_last = None
    for step in range(start_step, end_step + 1):
        if (step % args.eval_every == 0 or step == args.max_steps) and not (ckpt is not None and step == start_step):
            val_loss = evaluate(step)
        if step > start_step and (step % args.save_every == 0 or step == end_step):
            save(step, val_loss)
        if step == end_step:
            break

        t0 = time.perf_counter()
        lr = get_lr(step, args.max_lr, min_lr, args.warmup_steps, args.max_steps)
        loss, norm = train_step(model, optimizer, train_loader, grad_accum_steps, autocast, device, lr, args.grad_clip)
        train_loss = loss.item()  # waits for this step's work on the device
        if not math.isfinite(train_loss):
            last_ckpt = latest_checkpoint(args.log_dir)
            raise FloatingPointError(
                f"the training loss is {train_loss} at step {step}; stopping without updating the weights. "
                f"The last good checkpoint is {last_ckpt or 'none'}: lower --max_lr, or resume with --resume"
            )
        optimizer.step()
        sync(device)
        dt = time.perf_counter() - t0
        losses.append(train_loss)
        if master:
            tok_s = tokens_per_step / dt
            mfu = flops_step / dt / peak if peak else None
            logger.log(step=step, train_loss=train_loss, lr=lr, grad_norm=norm.item(), dt_ms=dt * 1000,
                       tokens_per_sec=tok_s, **({"mfu": mfu} if mfu is not None else {}))
            if step % args.log_every == 0 or step == end_step - 1:
                say(f"step {step:5d} | loss {train_loss:.6f} | lr {lr:.4e} | norm {norm.item():.4f} | "
                    f"dt {dt * 1000:.1f}ms | tok/sec {tok_s:,.0f}" + (f" | MFU {mfu * 100:.1f}%" if mfu else ""))
    return {"losses": losses, "val_loss": val_loss, "model": raw_model}


if __name__ == "__main__":
    main()
