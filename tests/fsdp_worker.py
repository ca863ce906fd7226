"""One torchrun launch that checks FSDP and the collectives many ways at once (gloo, CPU):

    torchrun --standalone --nproc_per_node=2 tests/fsdp_worker.py OUT_DIR

Each rank writes what it observed to OUT_DIR/rank<r>.json (after every check, so that a check
that hangs leaves the earlier ones), and rank 0 the whole model and AdamW state after one step to
OUT_DIR/full.pt, beside the sharded checkpoint OUT_DIR/model_00001; tests/test_fsdp.py launches
it once and asserts on all of it. A collective that waits on a rank that never comes fails after
a minute instead of hanging."""

import contextlib
import copy
import json
import os
import sys
from dataclasses import asdict
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import checkpoint  # noqa: E402
import parallel  # noqa: E402
import train_gpt2  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

CONFIG = GPTConfig(block_size=16, vocab_size=128, n_layer=3, n_head=2, n_embd=32)
B, T, ACCUM = 2, 16, 2  # 2 micro-steps per rank: the skipped gradient sync is exercised


class RecordingLoader:
    """Micro-step m of rank r reads batch m * W + r (the layout of DataLoaderLite); before each,
    it records whether any parameter already holds a gradient (the sharded, reduce-scattered one)."""

    def __init__(self, batches, model, rank, world_size):
        self.batches, self.model, self.rank, self.world_size = batches, model, rank, world_size
        self.micro_step, self.grads_before = 0, []

    def next_batch(self):
        self.grads_before.append(any(p.grad is not None for p in self.model.parameters()))
        b = self.batches[self.micro_step * self.world_size + self.rank]
        self.micro_step += 1
        return b[:, :-1], b[:, 1:]


def blocks_sharded(model):
    """For each block, whether its parameters are sharded (DTensors) rather than gathered."""
    return [isinstance(block.attn.c_attn.weight, DTensor) for block in model.transformer.h]


def full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def max_diff(a, b):
    return max((full(x).float() - full(y).float()).abs().max().item() for x, y in zip(a, b))


def adam_state(optimizer, model):
    return [optimizer.state[p][k] for p in model.parameters() for k in ("exp_avg", "exp_avg_sq", "step")]


def main(out_dir):
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    d = parallel.Dist(ddp=True, rank=rank, world_size=world_size, device="cpu")
    res = {}

    def record(**kw):
        res.update(kw)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)

    # --batch_size auto: the smallest of the ranks' answers
    record(all_reduce_min=parallel.all_reduce_min([8, 4, 2, 16][rank % 4], d))

    # --dtype bfloat16: bf16 compute, fp32 reduction, for every unit
    m16 = GPT(CONFIG)
    parallel.apply_fsdp(m16, "bfloat16")
    policies = {(str(u._get_fsdp_state()._mp_policy.param_dtype), str(u._get_fsdp_state()._mp_policy.reduce_dtype))
                for u in m16.modules() if isinstance(u, FSDPModule)}
    record(bf16_policies=sorted(policies), bf16_units=sum(isinstance(u, FSDPModule) for u in m16.modules()))

    torch.manual_seed(0)
    model = GPT(CONFIG)
    reference = copy.deepcopy(model)  # the same weights in one plain process
    parallel.apply_fsdp(model, "float32")
    optimizer = model.configure_optimizers(0.2, 1e-3, "cpu")  # weight decay 0.2, not the default 0.1
    batches = torch.randint(0, CONFIG.vocab_size, (ACCUM * world_size, B, T + 1), generator=torch.Generator().manual_seed(0))
    x, y = batches[0][:, :-1], batches[0][:, 1:]

    # the resharding rule: after a training forward every block but the last has freed its
    # gathered parameters; the root keeps its own
    model.train()
    loss = model(x, y)[1]
    record(sharded_after_forward=blocks_sharded(model), root_sharded_after_forward=isinstance(model.lm_head.weight, DTensor))
    loss.backward()
    model.zero_grad(set_to_none=True)

    # gathered(): inside, every rank holds the whole model and forwards alone (as rank 0 samples);
    # after, the parameters are sharded again and the resharding rule is back
    with parallel.gathered(model):
        inside = [isinstance(p, DTensor) for p in model.parameters()]
        record(sharded_inside_gathered=sum(inside), params=len(inside))
        if rank == 0 and not any(inside):  # a sharded forward here would wait on rank 1 forever
            logits = model(x)[0]
            record(lone_forward_shape=list(logits.shape))
    record(sharded_after_gathered=sum(isinstance(p, DTensor) for p in model.parameters()))
    loss = model(x, y)[1]
    record(sharded_after_forward_after_gathered=blocks_sharded(model))
    loss.backward()
    model.zero_grad(set_to_none=True)

    # gradient accumulation: no reduce-scatter before the last micro-step, and the accumulated
    # gradient is the whole batch's (4 sequences on each of 2 ranks) in one process
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loader = RecordingLoader(batches, model, rank, world_size)
    loss = train_gpt2.forward_backward(model, loader, ACCUM, contextlib.nullcontext(), scaler, d)
    whole = batches.reshape(-1, T + 1)
    ref_loss = reference(whole[:, :-1], whole[:, 1:])[1]
    ref_loss.backward()
    record(grads_before_micro_step=loader.grads_before, loss_diff=abs(loss.item() - ref_loss.item()),
           grad_diff=max_diff([p.grad for p in model.parameters()], [p.grad for p in reference.parameters()]))

    # a step, a sharded checkpoint, and the whole state for the test to compare --consolidate with
    train_gpt2.optimizer_step(optimizer, scaler, 1e-3, 1.0)
    ckpt_dir = os.path.join(out_dir, "model_00001")
    checkpoint.save_sharded_checkpoint(ckpt_dir, model, optimizer,
                                       {"step": 1, "config": asdict(CONFIG), "args": {"max_lr": 1e-3}}, d.master)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.master:
        torch.save({"model": model_sd, "optimizer": optim_sd}, os.path.join(out_dir, "full.pt"))

    # the checkpoint loaded into a model and optimizer of other weights, no state and another
    # weight decay: the same weights, AdamW state and param groups, and the same next step
    torch.manual_seed(1)
    fresh = GPT(CONFIG)
    parallel.apply_fsdp(fresh, "float32")
    fresh_optimizer = fresh.configure_optimizers(0.1, 1e-3, "cpu")
    checkpoint.load_sharded_checkpoint(ckpt_dir, fresh, fresh_optimizer)
    record(loaded_weights_diff=max_diff(list(fresh.parameters()), list(model.parameters())),
           loaded_adam_diff=max_diff(adam_state(fresh_optimizer, fresh), adam_state(optimizer, model)),
           loaded_weight_decays=[g["weight_decay"] for g in fresh_optimizer.param_groups])
    for m, opt in ((model, optimizer), (fresh, fresh_optimizer)):
        train_gpt2.forward_backward(m, RecordingLoader(batches.flip(0), m, rank, world_size), ACCUM,
                                    contextlib.nullcontext(), scaler, d)
        train_gpt2.optimizer_step(opt, scaler, 1e-3, 1.0)
    record(next_step_weights_diff=max_diff(list(fresh.parameters()), list(model.parameters())), done=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
