"""
Several processes under torchrun: the process group, the collectives the run uses, DDP or FSDP
around the model (with torch.compile), and which micro-step synchronises gradients. One process
without torchrun is the same code with world_size 1, where every collective is a no-op.
"""

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from device import peak_flops, resolve_device


@dataclass
class Dist:
    ddp: bool  # under torchrun, with a process group: the collectives below communicate
    rank: int
    world_size: int
    device: str  # this process's: cuda:LOCAL_RANK under torchrun on GPUs

    @property
    def master(self):  # the process that prints, logs and writes single-file checkpoints
        return self.rank == 0


def setup_distributed(device_arg):
    """The Dist of this process, from torchrun's environment (one process without it)."""
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
    return Dist(ddp, rank, world_size, device)


def all_reduce_mean(t, d):
    # SUM then divide: gloo has no ReduceOp.AVG before torch 2.6
    if d.ddp:
        dist.all_reduce(t)
        t /= d.world_size
    return t


def all_reduce_min(n, d):
    """The smallest of every rank's int n."""
    if not d.ddp:
        return n
    t = torch.tensor(n, device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def broadcast_from_master(obj, d):
    """Rank 0's obj on every rank (a path, a list of examples, an error message)."""
    if not d.ddp:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_peak_flops(d, dtype):
    """The peak the run's MFU is measured against, for all ranks together: the datasheet peak of
    the GPUs, or on CPU a matmul timed by every rank at once (torchrun gives each rank one thread,
    and ranks on one machine share its cores). None for a GPU not in the table, and on MPS."""
    if d.device.startswith("cuda"):
        peak, _ = peak_flops(d.device, dtype)
        return peak * d.world_size if peak is not None else None
    if d.device != "cpu":
        return None
    if d.ddp:
        dist.barrier()  # measure at the same time, so that each rank gets its share of the cores
    peak = torch.tensor(peak_flops("cpu", dtype, matmul_size=2048)[0], dtype=torch.float64)
    if d.ddp:
        dist.all_reduce(peak)
    return peak.item()


def raise_peak(peak, achieved, d, dtype):
    """The peak to measure MFU against once a step achieved more FLOP/s than peak, which only a
    measured (CPU) peak allows: it was timed while the machine was busier than now. Measured again
    (by this rank alone, for each rank's share of the cores), and never below the rate achieved,
    which the peak cannot be: MFU stays at or under 100%. Rank 0 only, between steps."""
    again = peak_flops("cpu", dtype, matmul_size=2048)[0] * d.world_size if d.device == "cpu" else 0.0
    new = max(peak, achieved, again)
    print(f"MFU: a step did {achieved / 1e9:,.1f} GFLOP/s, above the peak measured earlier ({peak / 1e9:,.1f}, "
          f"timed on a busier machine); measured again: {again / 1e9:,.1f}, so the peak is now {new / 1e9:,.1f}")
    return new


def wrap_model(model, d, compile, fsdp):
    """(train_model, infer_model) around the GPT. Training and validation run through train_model
    (one static shape, compiled once, DDP-wrapped); HellaSwag and sampling see a new length at
    every call, so they get their own compilation with dynamic shapes (a static graph would
    recompile per length), without DDP (under FSDP they run eager on the gathered model: see
    gathered). FSDP shards the GPT itself (apply_fsdp), before this."""
    train_model = infer_model = model
    if compile:
        train_model = torch.compile(model, dynamic=False)
        infer_model = model if fsdp else torch.compile(model, dynamic=True)
    if d.ddp and not fsdp:
        # DDP around the compiled model, as nanoGPT: the all-reduce still overlaps the backward.
        # TorchDynamo splits a graph at DDP's buckets (DDPOptimizer, torch._dynamo.config.optimize_ddp)
        # when it compiles a frame while a DDP forward is running (convert_frame reads
        # DDP._get_active_ddp_module(), which DDP sets around its call of the inner module), so
        # this order triggers it as PyTorch's documented torch.compile(DDP(model)) does: on 2 gloo
        # ranks (torch 2.13) both orders compile the same 4 graphs for 4 buckets, with gradients
        # equal to eager DDP's. This order keeps train_model a DDP, which gradient_sync's no_sync
        # needs. (Under FSDP, fully_shard's hooks break the graph at each block instead, and dynamo
        # compiles the blocks one by one)
        train_model = DDP(train_model, device_ids=[d.device] if d.device.startswith("cuda") else None)
    return train_model, infer_model


def gradient_sync(model, last):
    """The context of one micro-step's forward and backward. DDP all-reduces gradients during
    backward; only the last micro-step's backward needs it, so the others run under no_sync
    (which must be entered before the forward pass). FSDP likewise reduce-scatters only on the
    last; until then each rank keeps the whole model's gradients, as DDP does."""
    sharded = getattr(model, "_orig_mod", model)  # FSDP shards the GPT, which torch.compile wraps
    if isinstance(sharded, FSDPModule):
        sharded.set_requires_gradient_sync(last)
    if isinstance(model, DDP) and not last:
        return model.no_sync()
    return contextlib.nullcontext()


# -----------------------------------------------------------------------------
# FSDP (--fsdp): parameters, gradients and AdamW state sharded over the ranks, through PyTorch's
# own FSDP2 (fully_shard); checkpoint.py saves and loads it with torch.distributed.checkpoint


def reshards_after_forward(i, num_blocks):
    """Whether block i frees its gathered parameters after its forward: all but the last, which
    backward needs again at once (freeing it would only buy an all-gather straight away)."""
    return i < num_blocks - 1


def set_resharding(model):
    """Back to apply_fsdp's rule after gathered(); the root keeps its parameters, as fully_shard's
    default for the root."""
    blocks = model.transformer.h
    for i, block in enumerate(blocks):
        block.set_reshard_after_forward(reshards_after_forward(i, len(blocks)), recurse=False)
    model.set_reshard_after_forward(False, recurse=False)


def apply_fsdp(model, dtype):
    """Shard a GPT over all ranks (ZeRO-3). Every Block is one unit: its parameters are gathered
    just before its forward (and again before its backward) and freed after, so only a block or two
    is ever whole on a rank; the root unit takes the rest: wte, lm_head (the same matrix, tied, or
    its own with --no-tie_embeddings), wpe, ln_f.
    fully_shard turns the parameters into DTensors in place, so the optimizer is built after."""
    if dtype == "bfloat16":
        # the shards (what AdamW updates) stay fp32 and every gathered copy is bf16. Unlike autocast
        # under DDP, which casts only the matmuls' inputs, this makes the embeddings' outputs and so
        # the whole residual stream bf16 (README, --fsdp). Gradients are reduced in fp32 so that
        # averaging over ranks loses no precision
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp_policy = MixedPrecisionPolicy()  # float32 (float16 is autocast's, as under DDP)
    blocks = model.transformer.h
    for i, block in enumerate(blocks):
        fully_shard(block, mp_policy=mp_policy, reshard_after_forward=reshards_after_forward(i, len(blocks)))
    fully_shard(model, mp_policy=mp_policy)
    # the tied matrix is one Parameter, so it is sharded once and both modules keep the same
    # DTensor; were it ever untied, the two copies would drift apart without a word
    if model.config.tie_embeddings and model.transformer.wte.weight is not model.lm_head.weight:
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
        set_resharding(model)
