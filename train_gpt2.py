"""
Train GPT-2 (124M by default) on FineWeb-Edu token shards, with build-nanogpt's recipe.

The small run on CPU, offline, on the embedded corpus (prepared on first use), in one process
or several:

    python train_gpt2.py --preset cpu
    torchrun --standalone --nproc_per_node=2 train_gpt2.py --preset cpu

GPT-2 124M on 10B tokens of FineWeb-Edu (make the shards first with fineweb.py):

    python fineweb.py                                              # -> edu_fineweb10B/
    torchrun --standalone --nproc_per_node=8 train_gpt2.py         # one node, 8 GPUs
    # two nodes of 8 GPUs: 16 ranks * 32 * 1024 tokens = the 524288 of one step, with no accumulation
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train_gpt2.py --batch_size 32

Resume the newest checkpoint in --log_dir (on any number of GPUs: the total batch is kept and
grad_accum_steps re-derived), or a given one:

    torchrun --standalone --nproc_per_node=8 train_gpt2.py --resume
    python train_gpt2.py --resume log/model_05000.pt

The larger GPT-2s (--preset gpt2-350m, gpt2-774m, gpt2-1558m), with parameters, gradients and
AdamW state sharded over the GPUs (FSDP2) and checkpoints written as folders of shards:

    torchrun --standalone --nproc_per_node=8 train_gpt2.py --preset gpt2-1558m --data_dir edu_fineweb100B --fsdp
    python train_gpt2.py --consolidate log/model_32000     # -> log/model_32000.pt, for hellaswag.py and model.py

Every flag is listed, with its default, by --help. Outputs in --log_dir: log.jsonl (one JSON
object per event), loss.png (train/val loss and HellaSwag), model_XXXXX.pt checkpoints
(model_XXXXX/ folders with --fsdp).
"""

import argparse
import contextlib
import gc
import glob
import json
import math
import os
import re
import shutil
import sys
import time
import uuid
import warnings
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

import hellaswag
from fineweb import EMBEDDED_OUT_DIR, ShardError, find_shards, load_shard, prepare_embedded, read_shard_header
from model import (GPT, ArgumentParser, GPTConfig, UserError, exit_on_user_error, generate, get_tokenizer,
                   resolve_device)

# -----------------------------------------------------------------------------
# data loader


class DataLoaderLite:
    """(B, T) batches from token shards. An optimizer step reads step_tokens consecutive tokens
    (plus one, for the shifted targets) as chunks of B*T: micro-step m of rank r reads chunk
    m * num_processes + r. Which tokens a step sees depends on step_tokens alone, not on how the
    ranks and micro-steps split it, so a run resumes exactly on another number of GPUs."""

    def __init__(self, B, T, process_rank, num_processes, split, data_dir, step_tokens=None, vocab_size=None):
        self.B, self.T = B, T
        self.process_rank, self.num_processes = process_rank, num_processes
        self.step_tokens = step_tokens or B * T * num_processes  # validation: one micro-step a step
        assert self.step_tokens % (B * T * num_processes) == 0, "check_args guarantees a whole number of micro-steps"
        self.vocab_size = vocab_size
        # the data set is checked whole (one finished fineweb.py run, token ids < vocab_size)
        self.shards = find_shards(data_dir, split, vocab_size)
        # check every shard's size up front: a bad file should fail at start-up, not hours in
        for path in self.shards:
            ntok = read_shard_header(path)
            if ntok < self.step_tokens + 1:
                raise ShardError(
                    f"shard {path} has {ntok} tokens, fewer than the {self.step_tokens} + 1 that one step reads; "
                    f"regenerate it with fineweb.py with a larger --shard_size (or --val_tokens), or lower "
                    f"--total_batch_size (or --batch_size and --val_steps for validation)"
                )
        self.reset()

    def reset(self):
        self.load_state_dict({"shard": 0, "position": 0})

    def state_dict(self):
        """Where the next step starts: the same on every rank, for any number of ranks."""
        assert self.micro_step == 0, "saved between steps only"
        return {"shard": self.shard, "position": self.position}

    def load_state_dict(self, state):
        shard, position = state["shard"], state["position"]
        if not 0 <= shard < len(self.shards):
            raise ShardError(
                f"the checkpoint's data position is shard {shard}, but {len(self.shards)} shards exist; "
                f"resume on the data the run started with (was the data directory regenerated?)"
            )
        if shard != getattr(self, "shard", None):
            # a new shard is opened (and its token ids checked) once; the validation loader's reset
            # at every evaluation, or a wrap-around to the same single shard, keeps the open one
            self.shard, self.tokens = shard, load_shard(self.shards[shard], vocab_size=self.vocab_size)
        if not 0 <= position <= len(self.tokens) - (self.step_tokens + 1):
            raise ShardError(
                f"the checkpoint's data position {position} in {self.shards[shard]} ({len(self.tokens)} tokens) "
                f"leaves no room for a step of {self.step_tokens} tokens; resume with the --total_batch_size "
                f"of the checkpoint's run, on the same shards"
            )
        self.position, self.micro_step = position, 0

    def next_batch(self):
        B, T = self.B, self.T
        start = self.position + (self.micro_step * self.num_processes + self.process_rank) * B * T
        buf = torch.from_numpy(self.tokens[start : start + B * T + 1].astype(np.int64))
        x = buf[:-1].view(B, T)  # inputs
        y = buf[1:].view(B, T)  # targets: the next token at every position
        self.micro_step += 1
        if self.micro_step * B * T * self.num_processes == self.step_tokens:  # the step is complete
            self.position, self.micro_step = self.position + self.step_tokens, 0
            # the tail of a shard that cannot hold a whole step is skipped; after the last shard
            # we wrap around to the first
            if self.position + self.step_tokens + 1 > len(self.tokens):
                self.load_state_dict({"shard": (self.shard + 1) % len(self.shards), "position": 0})
        return x, y


# -----------------------------------------------------------------------------
# learning rate schedule


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


# -----------------------------------------------------------------------------
# devices. Each decision takes what it depends on (a device name, a GPU count), so that a CPU
# test can call it with a GPU's values

# dense (no sparsity) tensor-core peaks from NVIDIA's datasheets, FLOP/s per GPU. "float32" is
# TF32, which training enables for float32 matmuls; None: the card has no such units. Keys are
# tokens of torch.cuda.get_device_name(), all of which must be present; the first match wins,
# so a more specific entry comes before a less specific one
GPU_PEAK_FLOPS = [
    # H100 NVL: BF16 1,671 / TF32 835 TFLOPS with sparsity
    (("H100", "NVL"), {"bfloat16": 835.5e12, "float16": 835.5e12, "float32": 417.5e12}),
    # H100 PCIe: BF16 1,513 / TF32 756 with sparsity
    (("H100", "PCIe"), {"bfloat16": 756.5e12, "float16": 756.5e12, "float32": 378e12}),
    # H100 SXM5 ("NVIDIA H100 80GB HBM3"): BF16 1,979 / TF32 989 with sparsity
    (("H100",), {"bfloat16": 989.5e12, "float16": 989.5e12, "float32": 494.5e12}),
    # H200 NVL: as H100 NVL
    (("H200", "NVL"), {"bfloat16": 835.5e12, "float16": 835.5e12, "float32": 417.5e12}),
    # H200 SXM and GH200 (an H100/H200 GPU beside a Grace CPU): as H100 SXM
    (("H200",), {"bfloat16": 989.5e12, "float16": 989.5e12, "float32": 494.5e12}),
    (("GH200",), {"bfloat16": 989.5e12, "float16": 989.5e12, "float32": 494.5e12}),
    # HGX B200: BF16 4.5 / TF32 2.2 PFLOPS with sparsity
    (("B200",), {"bfloat16": 2250e12, "float16": 2250e12, "float32": 1100e12}),
    # A100 SXM4 and PCIe: BF16 312 / TF32 156 dense
    (("A100",), {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    # A10: BF16 125 / TF32 62.5 dense (the A10G of AWS is another card, not in the table)
    (("A10",), {"bfloat16": 125e12, "float16": 125e12, "float32": 62.5e12}),
    # L40S: BF16 362 / TF32 183 dense; L40: 181 / 90.5; L4: 121 / 60
    (("L40S",), {"bfloat16": 362e12, "float16": 362e12, "float32": 183e12}),
    (("L40",), {"bfloat16": 181e12, "float16": 181e12, "float32": 90.5e12}),
    (("L4",), {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    # GeForce RTX 4090: FP16/BF16 with FP32 accumulate 165 / TF32 82.6 dense
    (("RTX", "4090"), {"bfloat16": 165e12, "float16": 165e12, "float32": 82.6e12}),
    # GeForce RTX 3090: BF16 with FP32 accumulate 71 / TF32 35.6 dense
    (("RTX", "3090"), {"bfloat16": 71e12, "float16": 71e12, "float32": 35.6e12}),
    # V100 (Volta): FP16 tensor cores only, no BF16 or TF32 units: SXM2 125 FP16, 15.7 FP32; PCIe 112, 14
    (("V100", "SXM2"), {"bfloat16": None, "float16": 125e12, "float32": 15.7e12}),
    (("V100",), {"bfloat16": None, "float16": 112e12, "float32": 14e12}),
    # T4 (Turing): FP16 tensor cores 65, FP32 8.1; no BF16 or TF32
    (("T4",), {"bfloat16": None, "float16": 65e12, "float32": 8.1e12}),
]


def gpu_peak_flops(device_name, dtype):
    """The datasheet peak of the GPU named device_name (as torch.cuda.get_device_name() says it)
    for dtype, or None for a card not in the table (MFU is then not reported). A MIG slice
    ("... MIG 3g.40gb") has g of the GPU's 7 compute slices."""
    tokens = set(re.split(r"[\s\-_]+", device_name.upper()))
    for keys, peaks in GPU_PEAK_FLOPS:
        if all(k.upper() in tokens for k in keys):
            peak = peaks[dtype]
            mig = re.search(r"\bMIG (\d)g\.", device_name)
            if peak is not None and mig:
                peak *= int(mig.group(1)) / 7
            return peak
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


def configure_tf32(device_type):
    """TF32 tensor cores for float32 matmuls on CUDA (10 bits of mantissa, plenty for training).
    Set through the one flag that leaves both of torch's APIs readable: setting only the newer
    torch.backends.cuda.matmul.fp32_precision makes torch.get_float32_matmul_precision() and
    allow_tf32 raise ("mix of the legacy and new APIs"), which torch.compile reads in places.
    Not on CPU, where the global setting would also lower mkldnn's float32 matmuls."""
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    elif str(device).startswith("mps"):
        torch.mps.synchronize()


def setup_distributed(device_arg):
    """(ddp, rank, world_size, device) from torchrun's environment."""
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(device_arg, local_rank=local_rank if ddp else None)
    if ddp:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=torch.device(device))
        else:
            dist.init_process_group(backend="gloo")
    return ddp, rank, world_size, device


def peak_flops(device, dtype, ddp):
    """The peak the run's MFU is measured against, for all ranks together: the datasheet peak of
    the GPUs, or on CPU a matmul timed by every rank at once (torchrun gives each rank one thread,
    and ranks on one machine share its cores). None for a GPU not in the table."""
    world_size = dist.get_world_size() if ddp else 1
    if device.startswith("cuda"):
        peak = gpu_peak_flops(torch.cuda.get_device_name(device), dtype)
        return peak * world_size if peak is not None else None
    if device != "cpu":
        return None
    if ddp:
        dist.barrier()  # measure at the same time, so that each rank gets its share of the cores
    peak = torch.tensor(measure_peak_flops("cpu", dtype, n=2048), dtype=torch.float64)
    if ddp:
        dist.all_reduce(peak)
    return peak.item()


def all_reduce_mean(t, ddp):
    # SUM then divide: gloo has no ReduceOp.AVG before torch 2.6
    if ddp:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def broadcast_from_master(obj, ddp):
    """Rank 0's obj on every rank (a path, a list of examples, an error message)."""
    if not ddp:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -----------------------------------------------------------------------------
# FSDP (--fsdp): parameters, gradients and AdamW state sharded over the ranks, through PyTorch's
# own FSDP2 (fully_shard) and torch.distributed.checkpoint


def reshards_after_forward(i, num_blocks):
    """Whether block i frees its gathered parameters after its forward: all but the last, which
    backward needs again at once (freeing it would only buy an all-gather straight away)."""
    return i < num_blocks - 1


def apply_fsdp(model, dtype):
    """Shard a GPT over all ranks (ZeRO-3). Every Block is one unit: its parameters are gathered
    just before its forward (and again before its backward) and freed after, so only a block or two
    is ever whole on a rank; the root unit takes the rest: wte (which is lm_head, tied), wpe, ln_f.
    fully_shard turns the parameters into DTensors in place, so the optimizer is built after."""
    if dtype == "bfloat16":
        # compute in bf16 from fp32 master weights, as autocast does under DDP; gradients are
        # reduced in fp32 so that averaging over ranks loses no precision
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp_policy = MixedPrecisionPolicy()  # float32 (float16 is autocast's, as under DDP)
    blocks = model.transformer.h
    for i, block in enumerate(blocks):
        fully_shard(block, mp_policy=mp_policy, reshard_after_forward=reshards_after_forward(i, len(blocks)))
    fully_shard(model, mp_policy=mp_policy)
    # the tied matrix is one Parameter, so it is sharded once and both modules keep the same
    # DTensor; were it ever untied, the two copies would drift apart without a word
    if model.transformer.wte.weight is not model.lm_head.weight:
        raise RuntimeError("fully_shard untied transformer.wte.weight and lm_head.weight")
    return model


@contextlib.contextmanager
def gathered(model):
    """Every rank enters together; inside, each holds the whole model and a forward needs no other
    rank. Under FSDP a forward is collective (each block all-gathers), so forwards that ranks do
    unevenly (sampling on rank 0 alone, HellaSwag's uneven shares) would wait on each other
    forever. A no-op for a model that is not sharded."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    model.set_reshard_after_forward(False)  # every unit keeps what it gathers
    for m in units:
        m.unshard()
    try:
        with torch.no_grad():
            yield
    finally:
        for m in units:
            m.reshard()
        blocks = model.transformer.h  # back to apply_fsdp's setting
        for i, block in enumerate(blocks):
            block.set_reshard_after_forward(reshards_after_forward(i, len(blocks)), recurse=False)
        model.set_reshard_after_forward(False, recurse=False)  # the root keeps its parameters, as fully_shard's default


TRAIN_STATE = "train_state.pt"  # in a sharded checkpoint folder: everything but the tensors' shards


def save_sharded_checkpoint(ckpt_dir, model, optimizer, train_state, master):
    """Every rank writes its shards of the model and optimizer into the folder ckpt_dir (DCP's
    format), rank 0 adds train_state; collective. Written under a temporary name and renamed
    when complete, as save_checkpoint does. With several nodes ckpt_dir must be shared."""
    tmp = ckpt_dir + ".tmp"
    if master and os.path.isdir(tmp):
        shutil.rmtree(tmp)  # what an earlier crash left behind
    dist.barrier()
    # keyed by parameter name (GPT.state_dict()'s keys), so that it loads at any world size
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp)
    if master:
        torch.save(train_state, os.path.join(tmp, TRAIN_STATE))
        if os.path.isdir(ckpt_dir):
            shutil.rmtree(ckpt_dir)
        os.replace(tmp, ckpt_dir)
    dist.barrier()  # no rank goes on before the checkpoint is in place


def load_sharded_checkpoint(ckpt_dir, model, optimizer):
    """The model and optimizer of a sharded checkpoint, into a model sharded at any world size,
    or into a plain one (each rank reads the parts of the saved shards that overlap its own)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)  # the templates DCP loads into, in place
    state = {"model": model_sd, "optimizer": optim_sd}
    with warnings.catch_warnings():
        # in one process without a process group DCP says it assumes exactly that, which it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=ckpt_dir)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def consolidate_checkpoint(ckpt_dir, weight_decay=0.1):
    """A sharded checkpoint folder as our single-file checkpoint, ckpt_dir + '.pt', which
    hellaswag.py, model.py (and save_pretrained) and --resume read. One process, the whole model
    and AdamW state in CPU memory (16 bytes a parameter)."""
    state = load_checkpoint(ckpt_dir)
    model = GPT(GPTConfig(**state["config"]))
    optimizer = model.configure_optimizers(weight_decay, state["args"]["max_lr"], "cpu")
    load_sharded_checkpoint(ckpt_dir, model, optimizer)
    out = ckpt_dir.rstrip("/") + ".pt"
    save_checkpoint(out, {**state, "model": model.state_dict(), "optimizer": optimizer.state_dict()})
    return out


# -----------------------------------------------------------------------------
# command line

# the GPT-2 family: shapes from the GPT-2 paper (table 2); learning rate, batch and tokens from
# llm.c's published reproductions (scripts/run_gpt2_*.sh), whose learning rates and batches are
# GPT-3's (paper, table 2.1) but for 1558M. warmup 715 steps of 2**19 tokens is GPT-3's 375M
# tokens; llm.c uses 700 steps
PRESETS = {
    # 124M with build-nanogpt's recipe: 19073 steps of 524288 tokens is 10B tokens
    "gpt2-124m": {},
    # 350M (d24): llm.c, 60000 steps of 2**19 tokens (31.5B), lr 3e-4 decaying to 0
    "gpt2-350m": dict(n_layer=24, n_head=16, n_embd=1024, max_lr=3e-4, min_lr_ratio=0.0,
                      warmup_steps=700, max_steps=60000, batch_size=32),
    # 774M (d36): llm.c, 286102 steps of 2**19 tokens (150B), lr 2.5e-4 decaying to 0
    "gpt2-774m": dict(n_layer=36, n_head=20, n_embd=1280, max_lr=2.5e-4, min_lr_ratio=0.0,
                      warmup_steps=700, max_steps=286102, batch_size=16),
    # 1558M (d48): llm.c, 32000 steps of 2**20 tokens (33.5B), lr 6e-4 decaying to 6e-5
    "gpt2-1558m": dict(n_layer=48, n_head=25, n_embd=1600, max_lr=6e-4, min_lr_ratio=0.1,
                       warmup_steps=700, max_steps=32000, total_batch_size=1048576, batch_size=8),
    # a small GPT trained on CPU in minutes on the embedded offline corpus (CPython's docs). With
    # GPT-2's 50257-token vocabulary the lm_head is most of the work, so the step is kept small.
    # 4 sequences a micro-step: 2 micro-steps in one process, 1 each under torchrun with 2
    "cpu": dict(
        data_dir=EMBEDDED_OUT_DIR,
        log_dir="log_cpu",
        n_layer=4, n_head=4, n_embd=128, block_size=128,
        batch_size=4, seq_len=128, total_batch_size=1024,
        max_lr=2e-3, warmup_steps=20, max_steps=300,
        eval_every=100, val_steps=8, save_every=300,  # 8 x 4 x 128: 4096 validation tokens
        # float32: most CPUs have no bf16 matrix units, and where they do (this project's CI
        # machine) bf16 collapses when another process shares the cores; --dtype bfloat16 opts in.
        # No torch.compile: compiling takes longer than it saves in a run of a few minutes
        device="cpu", dtype="float32", compile=False,
    ),
}

# the flags that define a run: --resume refuses to change them. Others (max_steps, cadences,
# batch_size, device, ...) may change between a checkpoint and its resumption, and are logged
RUN_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "init_from", "seq_len",
             "total_batch_size", "data_dir", "max_lr", "min_lr_ratio", "warmup_steps", "weight_decay",
             "grad_clip", "seed")


def batch_size_arg(s):
    if s == "auto":
        return s
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of sequences or 'auto', got {s!r}") from None


def get_parser():
    p = ArgumentParser("train_gpt2.py", description=__doc__)
    a = p.add_argument
    presets = "; ".join(f"{name}: " + (" ".join(f"--{k} {v}" for k, v in s.items()) or "the defaults below")
                        for name, s in PRESETS.items())
    a("--preset", choices=list(PRESETS), default="gpt2-124m",
      help=f"a set of defaults; explicit flags override them. {presets}")
    # data and outputs
    a("--data_dir", default="edu_fineweb10B", help="folder of token shards written by fineweb.py")
    a("--log_dir", default="log", help="where log.jsonl, loss.png and checkpoints go")
    a("--resume", nargs="?", const="latest", default=None,
      help="continue the newest checkpoint in --log_dir, or the given .pt file; the flags that define the run must match it")
    a("--init_from", default=None, help="start from GPT-2 weights: gpt2|gpt2-medium|gpt2-large|gpt2-xl or a Hugging Face directory")
    a("--overwrite", action="store_true",
      help="start a new run in a --log_dir that holds another run: deletes its checkpoints, log.jsonl and loss.png first")
    # model
    a("--n_layer", type=int, default=12, help="transformer blocks")
    a("--n_head", type=int, default=12, help="attention heads per block")
    a("--n_embd", type=int, default=768, help="width of the residual stream")
    a("--block_size", type=int, default=1024, help="the model's context length")
    a("--vocab_size", type=int, default=50304, help="GPT-2's 50257 padded up to a multiple of 128 for faster matmuls")
    # batch: total_batch_size tokens per optimizer step = batch_size * seq_len * world_size * grad_accum_steps
    a("--batch_size", type=batch_size_arg, default=64,
      help="sequences per micro-step per process; auto (CUDA): the largest power of two up to the preset's that fits")
    a("--seq_len", type=int, default=1024, help="tokens per sequence")
    a("--total_batch_size", type=int, default=524288, help="tokens per optimizer step (2**19, about 0.5M, as GPT-3 124M)")
    # optimization
    a("--max_lr", type=float, default=6e-4, help="the learning rate after warmup")
    a("--min_lr_ratio", type=float, default=0.1, help="the LR decays to max_lr * min_lr_ratio")
    a("--warmup_steps", type=int, default=715, help="steps of linear warmup")
    a("--max_steps", type=int, default=19073, help="optimizer steps; the cosine ends here")
    a("--weight_decay", type=float, default=0.1, help="AdamW weight decay of the matrices")
    a("--grad_clip", type=float, default=1.0, help="clip the global gradient norm to this (0: no clipping)")
    a("--stop_at_step", type=int, default=None, help="end the run after this many steps, with a checkpoint, leaving the LR schedule of --max_steps unchanged (continue with --resume)")
    # evaluation, sampling, checkpoints
    a("--eval_every", type=int, default=250, help="validation loss, HellaSwag and samples every this many steps, and at the end")
    a("--val_steps", type=int, default=20, help="batches of validation loss per evaluation")
    a("--hellaswag", action=argparse.BooleanOptionalAction, default=True,
      help="HellaSwag acc_norm at each evaluation (skipped with a note when the default download has no network)")
    a("--hellaswag_file", default=None, help="a local hellaswag_val.jsonl (default: download into hellaswag.py's cache)")
    a("--hellaswag_limit", type=int, default=None, help="score only the first N HellaSwag examples (default: all)")
    a("--num_samples", type=int, default=4, help="samples printed at each evaluation (0: none)")
    a("--sample_len", type=int, default=32, help="tokens per sample")
    a("--prompt", default="Hello, I'm a language model,", help="what the samples continue")
    a("--save_every", type=int, default=5000, help="write a checkpoint every this many steps, and at the end")
    # system
    a("--seed", type=int, default=1337, help="seed of the weights' initialisation")
    a("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu")
    a("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
      help="autocast dtype of the forward pass (float16 with loss scaling, for GPUs without bf16), or plain float32")
    a("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile the model")
    a("--fsdp", action="store_true",
      help="shard parameters, gradients and AdamW state over the ranks (FSDP2, under torchrun) instead of DDP; "
           "checkpoints become folders that torch.distributed.checkpoint writes and reads at any number of ranks")
    a("--consolidate", metavar="DIR", default=None,
      help="only write DIR.pt, the single-file checkpoint of the sharded checkpoint folder DIR (for hellaswag.py, "
           "model.py, save_pretrained), and exit")
    a("--activation_checkpointing", action="store_true",
      help="recompute each block's activations in backward instead of storing them: less memory, about 1/3 more compute")
    a("--log_every", type=int, default=1, help="print a training line every this many steps")
    return p


def parse_args(argv=None):
    parser = get_parser()
    # presets are defaults, so that any explicit flag still wins
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**PRESETS[known.preset])
    return parser.parse_args(argv)


def check_args(args):
    """Validate the flags once, before anything is loaded or started."""
    positive = ["n_layer", "n_head", "n_embd", "block_size", "vocab_size", "seq_len",
                "total_batch_size", "max_steps", "eval_every", "val_steps", "save_every", "log_every"]
    if args.batch_size != "auto":
        positive.append("batch_size")
    for name in positive:
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("warmup_steps", "num_samples", "sample_len", "weight_decay", "grad_clip"):
        v = getattr(args, name)
        if not (v >= 0 and math.isfinite(v)):  # NaN fails every comparison
            raise UserError(f"--{name} must be a finite number >= 0, got {v}")
    if not (args.max_lr > 0 and math.isfinite(args.max_lr)):
        raise UserError(f"--max_lr must be a finite number > 0, got {args.max_lr}")
    if not 0 <= args.min_lr_ratio <= 1:
        raise UserError(f"--min_lr_ratio must be in [0, 1], got {args.min_lr_ratio}")
    if args.hellaswag_limit is not None and args.hellaswag_limit < 1:
        raise UserError(f"--hellaswag_limit must be >= 1, got {args.hellaswag_limit}")
    if args.warmup_steps > args.max_steps:
        raise UserError(f"--warmup_steps {args.warmup_steps} is more than --max_steps {args.max_steps}")
    if args.stop_at_step is not None and not 0 < args.stop_at_step <= args.max_steps:
        raise UserError(f"--stop_at_step {args.stop_at_step} must be in [1, --max_steps {args.max_steps}]")
    if args.init_from is None and not args.resume:
        # the model's own checks, in the words of the flags
        try:
            config_from_args(args)
        except ValueError as e:  # GPTConfig's words are its fields: say them as the flags that set them
            msg = str(e).replace("GPTConfig.", "").replace("GPTConfig: ", "")
            raise UserError(re.sub(r"\b(n_layer|n_head|n_embd|block_size|vocab_size)\b", r"--\1", msg)) from None
        if args.vocab_size < 50257:
            raise UserError(f"--vocab_size {args.vocab_size} is smaller than GPT-2's tokenizer (50257 tokens)")
        if args.seq_len > args.block_size:
            raise UserError(f"--seq_len {args.seq_len} is longer than the model's --block_size {args.block_size}")
    if args.hellaswag and args.hellaswag_file is not None and not os.path.isfile(args.hellaswag_file):
        raise UserError(f"--hellaswag_file {args.hellaswag_file} does not exist; give a HellaSwag JSONL file, or "
                        f"leave the flag out to download the val split, or pass --no-hellaswag")
    if args.preset == "cpu" and args.data_dir != EMBEDDED_OUT_DIR and not os.path.isdir(args.data_dir):
        # the embedded corpus is prepared only in its own folder: a mistyped path is a mistake
        raise UserError(f"--data_dir {args.data_dir} does not exist; the cpu preset prepares its corpus in "
                        f"{EMBEDDED_OUT_DIR} (leave --data_dir out), or make shards with fineweb.py --out_dir {args.data_dir}")


def config_from_args(args):
    return GPTConfig(block_size=args.block_size, vocab_size=args.vocab_size,
                     n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)


def grad_accum_steps_for(args, world_size):
    tokens_per_micro_step = args.batch_size * args.seq_len * world_size
    if args.total_batch_size % tokens_per_micro_step:
        raise UserError(
            f"--total_batch_size {args.total_batch_size} is not divisible by --batch_size * --seq_len * "
            f"world_size = {args.batch_size} * {args.seq_len} * {world_size} = {tokens_per_micro_step}; pick "
            f"--total_batch_size as a multiple of {tokens_per_micro_step} or change --batch_size"
        )
    return args.total_batch_size // tokens_per_micro_step


def find_batch_size(try_batch, max_batch_size):
    """The largest power of two up to max_batch_size for which try_batch(b) (one forward and
    backward of b sequences) does not run out of memory."""
    b = 1 << (max_batch_size.bit_length() - 1)
    while b >= 1:
        fits = True
        try:
            try_batch(b)
        except torch.OutOfMemoryError:
            fits = False
        # outside the except clause, whose traceback holds the failed try's tensors: free them
        # before the next, smaller try
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if fits:
            return b
        b //= 2
    raise UserError("--batch_size auto: even one sequence does not fit in this GPU's memory; try "
                    "--activation_checkpointing, a shorter --seq_len, or a smaller model")


# -----------------------------------------------------------------------------
# checkpoints and logs


def checkpoint_path(log_dir, step, sharded=False):
    """model_XXXXX.pt, or the folder model_XXXXX of a sharded (--fsdp) checkpoint."""
    return os.path.join(log_dir, f"model_{step:05d}" + ("" if sharded else ".pt"))


def list_checkpoints(log_dir):
    """The checkpoints in log_dir, files and sharded folders, lowest step first."""
    found = []
    for path in glob.glob(os.path.join(log_dir, "model_*")):
        m = re.fullmatch(r"model_(\d+)(\.pt)?", os.path.basename(path))
        if m and (os.path.isfile(path) if m.group(2) else os.path.isfile(os.path.join(path, TRAIN_STATE))):
            found.append((int(m.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(log_dir):
    """The checkpoint with the highest step in log_dir, or None."""
    found = list_checkpoints(log_dir)
    return found[-1] if found else None


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


def load_checkpoint(path, mmap=False):
    """A checkpoint's contents (of a sharded folder: all but the model and optimizer, which
    load_sharded_checkpoint reads); a UserError naming the file (and the one before it) when it
    cannot be read. weights_only: a checkpoint is plain tensors and numbers, so loading one from
    someone else cannot run code. mmap: tensors are read only when used (for a look at 'args')."""
    try:
        sharded = os.path.isdir(path)
        ckpt = torch.load(os.path.join(path, TRAIN_STATE) if sharded else path, map_location="cpu",
                          weights_only=True, mmap=mmap and not sharded)
        if not isinstance(ckpt, dict) or not {"config", "step", "args"} <= set(ckpt) or not (sharded or "model" in ckpt):
            raise ValueError("not a train_gpt2.py checkpoint")
        return ckpt
    except Exception as e:  # truncated, corrupt, or not ours: torch says it in many ways
        earlier = [p for p in list_checkpoints(os.path.dirname(path) or ".") if os.path.abspath(p) != os.path.abspath(path)]
        earlier = [p for p in earlier if p < path] if os.path.basename(path).startswith("model_") else earlier
        hint = f"resume from the one before it: --resume {earlier[-1]}" if earlier else "no earlier checkpoint is beside it"
        reason = str(e).splitlines()[0] if not isinstance(e, ValueError) else str(e)
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}: {reason[:80]}); it is truncated, "
                        f"corrupt or not a train_gpt2.py checkpoint; {hint}") from None


def check_resume(args, ckpt, path):
    """Refuse to continue a checkpoint under flags that define a different run; describe the
    flags that may change and did."""
    saved = ckpt["args"]
    same = lambda k, a, b: os.path.abspath(a) == os.path.abspath(b) if k == "data_dir" else a == b  # noqa: E731
    differ = [k for k in RUN_FLAGS if k in saved and not same(k, getattr(args, k), saved[k])]
    if differ:
        raise UserError(
            f"--resume {path}: the checkpoint's run was made with "
            + ", ".join(f"--{k} {saved[k]}" for k in differ) + ", this command says "
            + ", ".join(f"--{k} {getattr(args, k)}" for k in differ)
            + "; these define the run and cannot change mid-run: give the checkpoint's values "
            f"(its preset was {saved.get('preset')}), or start a new run in another --log_dir"
        )
    ignore = ("resume", "overwrite", "log_dir")
    return {k: (saved[k], v) for k, v in vars(args).items() if k in saved and k not in ignore and saved[k] != v}


def find_resume_checkpoint(args, ddp, rank):
    """(checkpoint, its path, the flags changed since) for --resume; (None, None, {}) for a new
    run, after checking that --log_dir holds no other run."""
    if not args.resume:
        other = latest_checkpoint(args.log_dir)
        if other and not args.overwrite:
            raise UserError(
                f"--log_dir {args.log_dir} already has checkpoints of another run ({other}); "
                f"continue it with --resume, or pass --overwrite to delete them, or choose another --log_dir"
            )
        return None, None, {}
    # rank 0 resolves "latest", so that every rank loads the same file
    path = broadcast_from_master(latest_checkpoint(args.log_dir) if args.resume == "latest" else args.resume, ddp)
    if path is None or not os.path.exists(path):
        where = f"in --log_dir {args.log_dir}" if args.resume == "latest" else path
        raise UserError(f"--resume: no checkpoint {where} (on rank {rank}: the ranks of a multi-node run need "
                        f"a shared --log_dir); start without --resume")
    ckpt = load_checkpoint(path)
    if args.fsdp and "model" in ckpt:
        raise UserError(f"--resume {path}: a single-file checkpoint continues without --fsdp; --fsdp resumes "
                        f"the sharded checkpoint folders it writes")
    changed = check_resume(args, ckpt, path)
    other = latest_checkpoint(args.log_dir)
    if other and ckpt.get("run_id") != load_checkpoint(other, mmap=True).get("run_id"):
        raise UserError(f"--log_dir {args.log_dir} holds checkpoints of another run ({other}); resume "
                        f"{path} into its own folder (--log_dir {os.path.dirname(path) or '.'}) or an empty one")
    return ckpt, path, changed


def build_model(args, ckpt):
    """The GPT of a checkpoint, of GPT-2's weights (--init_from), or freshly initialised."""
    torch.manual_seed(args.seed)  # the only randomness of a run: the initial weights
    if ckpt is not None:
        model = GPT(GPTConfig(**ckpt["config"]))
        if "model" in ckpt:  # a sharded checkpoint's weights are loaded once the model is sharded
            model.load_state_dict(ckpt["model"])
    elif args.init_from:
        try:
            model = GPT.from_pretrained(args.init_from)
        except (OSError, ValueError) as e:  # no network, not a GPT-2 folder
            raise UserError(f"--init_from {args.init_from}: cannot load it ({str(e).splitlines()[0][:160]}); the "
                            f"gpt2* names need the network to download once, or give a local Hugging Face folder") from None
        if args.seq_len > model.config.block_size:
            raise UserError(f"--seq_len {args.seq_len} is longer than {args.init_from}'s block_size {model.config.block_size}")
    else:
        model = GPT(config_from_args(args))
    model.activation_checkpointing = args.activation_checkpointing
    return model


def start_log_dir(args, master):
    """--overwrite: delete the previous run's checkpoints and log (only now, once the new run's
    flags, data and model have all been accepted)."""
    if not master:
        return
    if args.overwrite and not args.resume:
        old = list_checkpoints(args.log_dir) + [p for p in (os.path.join(args.log_dir, n) for n in ("log.jsonl", "loss.png"))
                                                if os.path.exists(p)]
        for path in old:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        if old:
            print(f"--overwrite: deleted {len(old)} files of the previous run in {args.log_dir}")
    os.makedirs(args.log_dir, exist_ok=True)


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
# the training step and the evaluations


def train_step(model, optimizer, train_loader, grad_accum_steps, autocast, device, grad_clip, scaler):
    """Forward and backward over grad_accum_steps micro-batches and the gradient clipping; the
    caller sets the LR before and steps the optimizer after. model may be DDP-wrapped or
    FSDP-sharded, compiled or not. Returns the mean loss over micro-steps and ranks, and the
    gradient norm before clipping."""
    ddp = isinstance(model, DDP)
    # FSDP shards the GPT itself, which torch.compile then wraps (as _orig_mod)
    sharded = getattr(model, "_orig_mod", model)
    fsdp = isinstance(sharded, FSDPModule)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_accum = torch.zeros((), device=device)
    for micro_step in range(grad_accum_steps):
        x, y = train_loader.next_batch()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # DDP all-reduces gradients during backward; only the last micro-step's backward needs
        # it, so the others run under no_sync (which must be entered before the forward pass).
        # FSDP likewise reduce-scatters only on the last; until then each rank keeps the whole
        # model's gradients, as DDP does
        last = micro_step == grad_accum_steps - 1
        if fsdp:
            sharded.set_requires_gradient_sync(last)
        with (model.no_sync() if ddp and not last else contextlib.nullcontext()):
            with autocast:
                loss = model(x, y)[1]  # the logits are not kept alive through backward
            # the loss is a mean over the micro-batch; dividing by grad_accum_steps makes the
            # summed gradients the mean over the whole batch, as if it were one forward pass
            loss = loss / grad_accum_steps
            loss_accum += loss.detach()
            # float16: the loss is scaled up so that small gradients do not underflow
            scaler.scale(loss).backward()
    all_reduce_mean(loss_accum, ddp or fsdp)
    scaler.unscale_(optimizer)  # clip the true gradients (a no-op without float16)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # over FSDP's sharded gradients this all-reduces the shards' squared norms and scales every
    # shard by the one global factor; the norm comes back as a replicated DTensor
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return loss_accum, norm


@torch.no_grad()
def validation_loss(model, val_loader, val_steps, autocast, device, ddp):
    """The mean loss of val_steps batches, the same ones every time, over all ranks. model may be
    the DDP-wrapped training model: without gradients DDP's forward communicates nothing."""
    model.eval()
    val_loader.reset()
    val_loss = torch.zeros((), device=device)
    for _ in range(val_steps):
        x, y = val_loader.next_batch()
        with autocast:
            val_loss += model(x.to(device), y.to(device))[1] / val_steps
    return all_reduce_mean(val_loss, ddp).item()


def hellaswag_counts(infer_model, head, examples, autocast, device, block_size, rank, ddp):
    """(n, num_correct, num_correct_norm) of HellaSwag over all ranks, each scoring its share. The
    model returns hidden states and head projects only the endings' positions to the vocabulary."""
    world_size = dist.get_world_size() if ddp else 1
    counts = hellaswag.evaluate(lambda idx: infer_model(idx, return_hidden=True)[0], examples, device,
                                rank=rank, world_size=world_size, autocast=autocast, head=head,
                                # a small model's context can be shorter than a row: the scorer crops it
                                block_size=block_size)
    c = torch.tensor([counts["n"], counts["num_correct"], counts["num_correct_norm"]], device=device)
    if ddp:
        dist.all_reduce(c)
    return c.tolist()


def evaluate(step, args, model, train_model, infer_model, val_loader, hella_examples, autocast, device, rank, ddp, logger):
    """Validation loss, HellaSwag and samples at step, printed and logged; returns the loss."""
    master = rank == 0
    event = {"step": step, "val_loss": validation_loss(train_model, val_loader, args.val_steps, autocast, device, ddp)}
    msg = f"step {step:5d} | val loss {event['val_loss']:.4f}"
    with gathered(model) if hella_examples is not None or args.num_samples else contextlib.nullcontext():
        if hella_examples is not None:
            n, correct, correct_norm = hellaswag_counts(infer_model, model.lm_head, hella_examples, autocast, device,
                                                        model.config.block_size, rank, ddp)
            event.update(hellaswag_acc=correct / n, hellaswag_acc_norm=correct_norm / n, hellaswag_n=n)
            msg += f" | HellaSwag acc_norm {correct_norm}/{n} = {correct_norm / n:.4f}"
        if master and args.num_samples:
            # rank 0 alone: sampling needs no other rank, so no rank waits on a collective
            enc = get_tokenizer()
            prompt = torch.tensor(enc.encode_ordinary(args.prompt), dtype=torch.long, device=device)
            idx = prompt.unsqueeze(0).repeat(args.num_samples, 1)  # (num_samples, T)
            gen = torch.Generator(device=device).manual_seed(42)
            with autocast:
                out = generate(infer_model, idx, args.sample_len, top_k=50, generator=gen, block_size=model.config.block_size)
            event["samples"] = [enc.decode(row.tolist()) for row in out]
    if master:
        print(msg)
        for text in event.get("samples", []):
            print(f"sample: {text!r}")
        logger.log(**event)
        baselines = "fineweb" in os.path.abspath(args.data_dir).lower()  # OpenAI's 124M figures for comparison
        plot_log(logger.path, os.path.join(args.log_dir, "loss.png"), baselines)
    return event["val_loss"]


def make_loaders(args, rank, world_size, vocab_size, ddp):
    """The train and validation loaders of --data_dir. The cpu preset's embedded corpus needs no
    network: rank 0 makes its shards on first use, and every rank waits for that, whatever it
    finds on disk."""
    if args.preset == "cpu" and args.data_dir == EMBEDDED_OUT_DIR:
        if rank == 0 and not os.path.isdir(args.data_dir):
            print(f"preparing the embedded corpus (CPython's reference docs) in {args.data_dir}")
            prepare_embedded(args.data_dir)
        if ddp:
            dist.barrier()
    train_loader = DataLoaderLite(args.batch_size, args.seq_len, rank, world_size, "train", args.data_dir,
                                  step_tokens=args.total_batch_size, vocab_size=vocab_size)
    val_loader = DataLoaderLite(args.batch_size, args.seq_len, rank, world_size, "val", args.data_dir,
                                vocab_size=vocab_size)
    return train_loader, val_loader


def load_hellaswag(args, master, ddp):
    """The HellaSwag examples, loaded by rank 0 and sent to the others (a worker node needs neither
    the file nor the network), or None when the default download is unreachable. A --hellaswag_file
    that cannot be read is an error on every rank."""
    result = None
    if master:
        try:
            result = hellaswag.load_examples("val", file=args.hellaswag_file, limit=args.hellaswag_limit, progress=False)
        except hellaswag.DownloadError as e:
            result = f"HellaSwag is skipped for this run: {e}"  # no network: say it once, train on
        except UserError as e:
            result = e
    result = broadcast_from_master(result, ddp)
    if isinstance(result, UserError):
        raise result
    if isinstance(result, str):
        if master:
            print(result, flush=True)
        return None
    return result


# -----------------------------------------------------------------------------
# the run


def main(argv=None):
    return exit_on_user_error("train_gpt2.py", run, argv)


def run(argv=None):
    args = parse_args(argv)
    if args.consolidate:
        if not os.path.isfile(os.path.join(args.consolidate, TRAIN_STATE)):
            raise UserError(f"--consolidate {args.consolidate} is not a sharded checkpoint folder (no {TRAIN_STATE} in it)")
        print(f"wrote {consolidate_checkpoint(args.consolidate)}")
        return None
    check_args(args)
    if args.fsdp and "RANK" not in os.environ:
        raise UserError("--fsdp runs under torchrun: torchrun --standalone --nproc_per_node=N train_gpt2.py --fsdp (N may be 1)")
    ddp, rank, world_size, device = setup_distributed(args.device)
    try:
        return train(args, ddp, rank, world_size, device)
    except UserError:
        raise  # every rank meets it; rank 0 says it
    except BaseException:
        if ddp:
            print(f"[rank {rank}] failed", file=sys.stderr, flush=True)
        raise
    finally:
        if ddp and dist.is_initialized():
            dist.destroy_process_group()


def train(args, ddp, rank, world_size, device):
    master = rank == 0  # this process logs, writes checkpoints and prints
    device_type = torch.device(device).type
    say = print if master else lambda *a, **k: None

    # ---- the checkpoint to resume, or a fresh --log_dir
    ckpt, resume_path, changed = find_resume_checkpoint(args, ddp, rank)

    # ---- the model
    model = build_model(args, ckpt)
    config = model.config
    model.to(device)
    configure_tf32(device_type)
    autocast = torch.autocast(device_type, dtype=getattr(torch, args.dtype), enabled=args.dtype != "float32")
    # float16 needs its loss scaled so that small gradients do not underflow; disabled, the
    # scaler passes everything through unchanged
    scaler = torch.amp.GradScaler(device_type, enabled=args.dtype == "float16")
    if args.batch_size == "auto":
        args.batch_size = auto_batch_size(model, args, autocast, device, ddp)
        say(f"--batch_size auto: {args.batch_size} sequences of {args.seq_len} tokens fit")
    grad_accum_steps = grad_accum_steps_for(args, world_size)

    # ---- data
    train_loader, val_loader = make_loaders(args, rank, world_size, config.vocab_size, ddp)
    hella_examples = load_hellaswag(args, master, ddp) if args.hellaswag else None

    # ---- FSDP, the optimizer (of the sharded parameters), and the state of a resumed run
    if args.fsdp:
        apply_fsdp(model, args.dtype)
    optimizer = model.configure_optimizers(args.weight_decay, args.max_lr, device_type, verbose=master)
    start_step, val_loss, run_id = 0, None, uuid.uuid4().hex
    if ckpt is not None:
        if "model" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
        else:  # a sharded folder, written at any number of ranks
            load_sharded_checkpoint(resume_path, model, optimizer)
        if ckpt.get("scaler"):  # (empty from a run without float16, which may switch to it now)
            scaler.load_state_dict(ckpt["scaler"])
        train_loader.load_state_dict(ckpt["train_loader"])
        start_step, val_loss, run_id = ckpt["step"], ckpt["val_loss"], ckpt.get("run_id", run_id)
        say(f"resuming {resume_path} at step {start_step}" + "".join(
            f"; --{k} {old} -> {new}" for k, (old, new) in changed.items()))
        del ckpt  # the weights and optimizer state live on in the model: free the host copy
    start_log_dir(args, master)
    logger = Logger(args.log_dir, resume_step=start_step if args.resume else None) if master else None

    # ---- compile and DDP. model is the GPT itself: checkpoints store it. Training and validation
    # run through train_model (one static shape, compiled once, DDP-wrapped); HellaSwag and
    # sampling see a new length at every call, so they get their own compilation with dynamic
    # shapes (a static graph would recompile per length), without DDP (under FSDP they run eager
    # on the gathered model: see gathered)
    train_model = infer_model = model
    if args.compile:
        train_model = torch.compile(model, dynamic=False)
        infer_model = model if args.fsdp else torch.compile(model, dynamic=True)
    if ddp and not args.fsdp:
        train_model = DDP(train_model, device_ids=[device] if device_type == "cuda" else None)

    tokens_per_step = args.total_batch_size
    peak = peak_flops(device, args.dtype, ddp)
    say(f"model: {config}, {model.num_params():,} parameters")
    say(f"total_batch_size {args.total_batch_size} tokens = batch_size {args.batch_size} * seq_len {args.seq_len} "
        f"* world_size {world_size} * grad_accum_steps {grad_accum_steps}")
    min_lr = args.max_lr * args.min_lr_ratio
    end_step = args.stop_at_step or args.max_steps
    losses = []

    # ---- the loop. `step` counts the optimizer steps done so far: evaluation and checkpoints at
    # step s see the weights after s updates
    for step in range(start_step, end_step + 1):
        last_step = step == end_step
        # (a resumed run's first step was evaluated before its checkpoint was written)
        if (step % args.eval_every == 0 or step == args.max_steps) and not (args.resume and step == start_step):
            val_loss = evaluate(step, args, model, train_model, infer_model, val_loader, hella_examples, autocast,
                                device, rank, ddp, logger)
        if step > start_step and (step % args.save_every == 0 or last_step):
            path = checkpoint_path(args.log_dir, step, sharded=args.fsdp)
            state = {"scaler": scaler.state_dict(), "step": step, "config": asdict(config), "args": vars(args),
                     "run_id": run_id, "train_loader": train_loader.state_dict(), "val_loss": val_loss}
            if args.fsdp:  # every rank writes its shards
                save_sharded_checkpoint(path, model, optimizer, state, master)
            elif master:
                save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **state})
            say(f"saved {path}")
        if last_step:
            break

        # ---- one optimizer step
        t0 = time.perf_counter()
        lr = get_lr(step, args.max_lr, min_lr, args.warmup_steps, args.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, norm = train_step(train_model, optimizer, train_loader, grad_accum_steps, autocast, device, args.grad_clip, scaler)
        train_loss = loss.item()  # waits for this step's work on the device
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"the training loss is {train_loss} at step {step}; stopping without updating the weights. "
                f"The last good checkpoint is {latest_checkpoint(args.log_dir) or 'none'}: lower --max_lr, or resume with --resume"
            )
        scale = scaler.get_scale()
        scaler.step(optimizer)  # optimizer.step(), skipped by float16's scaler when a gradient overflowed
        scaler.update()
        skipped = scaler.is_enabled() and scaler.get_scale() < scale
        sync(device)
        dt = time.perf_counter() - t0
        losses.append(train_loss)
        if master:
            tok_s = tokens_per_step / dt
            mfu = model.estimate_mfu(tok_s, args.seq_len, peak) if peak else None
            logger.log(step=step, train_loss=train_loss, lr=lr, grad_norm=norm.item(), dt_ms=dt * 1000,
                       tokens_per_sec=tok_s, **({"mfu": mfu} if mfu is not None else {}),
                       **({"skipped": True, "loss_scale": scaler.get_scale()} if skipped else {}))
            if step % args.log_every == 0 or step == end_step - 1 or skipped:
                say(f"step {step:5d} | loss {train_loss:.6f} | lr {lr:.4e} | norm {norm.item():.4f} | "
                    f"dt {dt * 1000:.1f}ms | tok/sec {tok_s:,.0f}" + (f" | MFU {mfu * 100:.1f}%" if mfu else "")
                    + (f" | float16 overflow: step skipped, loss scale now {scaler.get_scale():g}" if skipped else ""))
    return {"losses": losses, "val_loss": val_loss, "model": model}


def auto_batch_size(model, args, autocast, device, ddp):
    """--batch_size auto: the largest power of two up to the preset's micro-batch whose forward and
    backward fit on this GPU, the smallest over all ranks. Tried eager and unsharded, before
    torch.compile and FSDP, which need less: the answer errs small, never into an out-of-memory."""
    if not device.startswith("cuda"):
        raise UserError("--batch_size auto works on CUDA GPUs only; give a number of sequences")
    max_batch_size = PRESETS[args.preset].get("batch_size", get_parser().get_default("batch_size"))

    def try_batch(b):
        x = torch.zeros((b, args.seq_len), dtype=torch.long, device=device)
        try:
            with autocast:
                loss = model(x, x)[1]
            loss.backward()
        finally:
            model.zero_grad(set_to_none=True)  # a try that failed in backward leaves no gradients

    b = torch.tensor(find_batch_size(try_batch, max_batch_size), device=device)
    if ddp:
        dist.all_reduce(b, op=dist.ReduceOp.MIN)
    return int(b.item())


if __name__ == "__main__":
    main()
