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

import contextlib
import math
import os
import sys
import time
import uuid

if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    # --help at once, not after the seconds that importing torch takes on a busy machine
    from common import exit_on_user_error
    from train_args import parse_args

    exit_on_user_error("train_gpt2.py", parse_args, None, __doc__)

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

import checkpoint
import hellaswag
import runlog
from common import UserError, exit_on_user_error
from device import auto_batch_size, autocast_and_scaler, configure_tf32, sync
from fineweb import EMBEDDED_OUT_DIR, prepare_embedded
from model import GPT, GPTConfig
from parallel import (all_reduce_mean, all_reduce_min, apply_fsdp, broadcast_from_master, gathered, gradient_sync,
                      raise_peak, run_peak_flops, setup_distributed, wrap_model)
from sample import sample_text
from shards import (MANIFEST, ShardError, check_data_dir, data_fingerprint, find_shards, first_three, load_shard,
                    read_shard_header)
from train_args import PRESETS, check_args, config_from_args, get_parser, parse_args

# -----------------------------------------------------------------------------
# data loader


def step_shards(data_dir, split, step_tokens, vocab_size=None, verbose=False):
    """The shards of a split that hold a step (step_tokens + 1 tokens), after checking the data set
    whole (one data set, token ids < vocab_size) and every shard's size up front: a bad file fails
    at start-up, not hours in. A shorter shard (fineweb.py's last one, with a small --shard_size)
    is skipped, saying so (verbose)."""
    shards = find_shards(data_dir, split, vocab_size)
    sizes = {path: read_shard_header(path) for path in shards}
    usable = [path for path in shards if sizes[path] >= step_tokens + 1]
    short = [f"{os.path.basename(p)} ({sizes[p]} tokens)" for p in shards if p not in usable]
    if not usable:
        raise ShardError(
            f"--data_dir {data_dir}: no {split} shard holds the {step_tokens} + 1 tokens that one step reads "
            f"(the largest has {max(sizes.values())}); make larger shards with fineweb.py --shard_size (or "
            f"--val_tokens), or lower --total_batch_size (or --batch_size for validation)"
        )
    if short and verbose:
        print(f"--data_dir {data_dir}: skipping {len(short)} {split} shard(s) shorter than one step of "
              f"{step_tokens} + 1 tokens: {first_three(short)}")
    return usable


class DataLoaderLite:
    """(B, T) batches from token shards. An optimizer step reads step_tokens consecutive tokens
    (plus one, for the shifted targets) as chunks of B*T: micro-step m of rank r reads chunk
    m * num_processes + r. Which tokens a step sees depends on step_tokens alone, not on how the
    ranks and micro-steps split it, so a run resumes exactly on another number of GPUs."""

    def __init__(self, B, T, process_rank, num_processes, split, data_dir, step_tokens=None, vocab_size=None,
                 verbose=True):
        self.B, self.T = B, T
        self.process_rank, self.num_processes = process_rank, num_processes
        self.step_tokens = step_tokens or B * T * num_processes  # validation: one micro-step a step
        assert self.step_tokens % (B * T * num_processes) == 0, "check_args guarantees a whole number of micro-steps"
        self.vocab_size = vocab_size
        self.shards = step_shards(data_dir, split, self.step_tokens, vocab_size, verbose)
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


def get_lr(step, max_lr, min_lr, warmup_steps, max_steps, schedule="cosine", cooldown_frac=0.4):
    """Linear warmup over warmup_steps, then cosine decay from max_lr to min_lr at max_steps; or
    (schedule "wsd", warmup-stable-decay) max_lr held until the last cooldown_frac of max_steps,
    which decay linearly to min_lr. WSD's lr stays high for longer, and its cooldown is where the
    loss drops (Hägele et al. 2024: it matches cosine with a cooldown of about 20%)."""
    if step < warmup_steps:
        # (step + 1): the very first step already gets a non-zero learning rate
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    if schedule == "wsd":
        cooldown_start = max_steps * (1 - cooldown_frac)
        if step < cooldown_start:
            return max_lr
        return max_lr + (step - cooldown_start) / (max_steps - cooldown_start) * (min_lr - max_lr)
    decay_ratio = (step - warmup_steps) / (max_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return min_lr + coeff * (max_lr - min_lr)


# -----------------------------------------------------------------------------
# the step: forward and backward over the micro-batches, then the optimizer


def forward_backward(model, loader, grad_accum_steps, autocast, scaler, d):
    """The gradients of one optimizer step's batch, accumulated over grad_accum_steps micro-batches
    (model may be DDP-wrapped or FSDP-sharded, compiled or not); the mean loss over micro-steps and
    ranks."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss_accum = torch.zeros((), device=d.device)
    for micro_step in range(grad_accum_steps):
        x, y = loader.next_batch()
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        # gradients are synchronised across ranks on the last micro-step only (see gradient_sync)
        with gradient_sync(model, last=micro_step == grad_accum_steps - 1):
            with autocast:
                loss = model(x, y)[1]  # the logits are not kept alive through backward
            # the loss is a mean over the micro-batch; dividing by grad_accum_steps makes the
            # summed gradients the mean over the whole batch, as if it were one forward pass
            loss = loss / grad_accum_steps
            loss_accum += loss.detach()
            # float16: the loss is scaled up so that small gradients do not underflow
            scaler.scale(loss).backward()
    return all_reduce_mean(loss_accum, d)


def optimizer_step(optimizer, scaler, lr, grad_clip):
    """Clip the gradients and step at learning rate lr. Returns the gradient norm before clipping and
    whether float16's scaler skipped the step (a gradient overflowed)."""
    scaler.unscale_(optimizer)  # clip the true gradients (a no-op without float16)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # over FSDP's sharded gradients this all-reduces the shards' squared norms and scales every
    # shard by the one global factor; the norm comes back as a replicated DTensor
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)  # Muon's groups run at --muon_lr / --max_lr of it
    scale = scaler.get_scale()
    scaler.step(optimizer)  # optimizer.step(), skipped by float16's scaler when a gradient overflowed
    scaler.update()
    return norm, scaler.is_enabled() and scaler.get_scale() < scale


# -----------------------------------------------------------------------------
# evaluation: validation loss, HellaSwag, samples


SLOW_VALIDATION_S = 30  # a validation expected to take longer says so


@torch.no_grad()
def validation_loss(model, val_loader, val_steps, autocast, d):
    """The mean loss of the val split's first val_steps batches, the same tokens at any number of
    ranks: val_loader is a one-process loader on every rank, and rank r computes batches r,
    r + world_size, ... (reading the others is a slice of a memmap). model may be the DDP-wrapped
    training model (without gradients DDP's forward communicates nothing), or an FSDP-sharded one
    inside gathered(), where a forward needs no other rank."""
    model.eval()
    val_loader.reset()
    val_loss = torch.zeros((), device=d.device)
    t0 = time.perf_counter()
    for i in range(val_steps):
        x, y = val_loader.next_batch()
        if i % d.world_size == d.rank:
            with autocast:
                val_loss += model(x.to(d.device), y.to(d.device))[1] / val_steps
        if i == 0 and d.master:  # a large model on a CPU validates for minutes: say how long
            sync(d.device)
            expected = (time.perf_counter() - t0) * math.ceil(val_steps / d.world_size)
            if expected > SLOW_VALIDATION_S:
                print(f"validation: {val_steps} batches, about {runlog.duration(expected)}", flush=True)
    if d.ddp:
        dist.all_reduce(val_loss)  # the sum of the ranks' shares
    return val_loss.item()


def evaluate(step, args, model, train_model, infer_model, val_loader, hella_examples, autocast, d):
    """The event of an evaluation at step: validation loss and HellaSwag (each rank computes its
    share) and rank 0's samples, all on the gathered model (under FSDP the ranks' forwards here
    are uneven). HellaSwag and sampling run through infer_model on hidden states, with lm_head
    applied to the endings' positions only."""
    block_size = model.config.block_size  # a small model's context can be shorter than a row: it is cropped
    with gathered(model):
        event = {"step": step, "val_loss": validation_loss(train_model, val_loader, args.val_steps, autocast, d)}
        if hella_examples is not None:
            counts = hellaswag.evaluate(lambda idx: infer_model(idx, return_hidden=True)[0], hella_examples, d.device,
                                        rank=d.rank, world_size=d.world_size, autocast=autocast, head=model.lm_head,
                                        block_size=block_size)
            c = torch.tensor([counts["n"], counts["num_correct"], counts["num_correct_norm"]], device=d.device)
            if d.ddp:
                dist.all_reduce(c)
            n, correct, correct_norm = c.tolist()
            event.update(hellaswag_acc=correct / n, hellaswag_acc_norm=correct_norm / n, hellaswag_n=n)
        if d.master and args.num_samples:  # rank 0 alone: sampling needs no other rank
            event["samples"] = sample_text(infer_model, args.prompt, args.num_samples, args.sample_len, d.device,
                                           autocast=autocast, block_size=block_size)
    return event


def load_hellaswag(args, d):
    """The HellaSwag examples, loaded by rank 0 and sent to the others (a worker node needs neither
    the file nor the network), or None when the default download is unreachable. A --hellaswag_file
    that cannot be read is an error on every rank."""
    result = None
    if d.master:
        try:
            result = hellaswag.load_examples("val", file=args.hellaswag_file, limit=args.hellaswag_limit, progress=False)
        except hellaswag.DownloadError as e:
            result = f"HellaSwag is skipped for this run: {e}"  # no network: say it once, train on
        except UserError as e:
            result = e
    result = broadcast_from_master(result, d)
    if isinstance(result, UserError):
        raise result
    if isinstance(result, str):
        if d.master:
            print(result, flush=True)
        return None
    return result


# -----------------------------------------------------------------------------
# the run


def build_model(args, ckpt):
    """The GPT of a checkpoint, of GPT-2's weights (--init_from), or freshly initialised."""
    torch.manual_seed(args.seed)  # the only randomness of a run: the initial weights
    if ckpt is not None:
        model = GPT(GPTConfig(**ckpt["config"]))
        if "model" in ckpt:  # a sharded checkpoint's weights are loaded once the model is sharded
            model.load_state_dict(ckpt["model"])
    elif args.init_from:
        model = checkpoint.load_model(args.init_from, flag="--init_from").train()
        if args.seq_len > model.config.block_size:
            raise UserError(f"--seq_len {args.seq_len} is longer than {args.init_from}'s block_size {model.config.block_size}")
    else:
        model = GPT(config_from_args(args))
    model.activation_checkpointing = args.activation_checkpointing
    return model


def prepare_data(args, d):
    """--data_dir, checked before the model is built (minutes for a large one on a CPU): refused
    if missing or too small for one step, noted if it has no manifest. The cpu preset's embedded
    corpus needs no network: rank 0 makes its shards on first use, and every rank waits for that,
    whatever it finds on disk. Returns the data set's fingerprint, which checkpoints record."""
    if args.preset == "cpu" and args.data_dir == EMBEDDED_OUT_DIR:
        if d.master and not os.path.isdir(args.data_dir):
            print(f"preparing the embedded corpus (CPython's reference docs) in {args.data_dir}")
            prepare_embedded(args.data_dir)
        if d.ddp:
            dist.barrier()
    step_shards(args.data_dir, "train", args.total_batch_size)
    manifest = check_data_dir(args.data_dir)
    if d.master and manifest.get("indexed") is False:
        print(f"--data_dir {args.data_dir} has no {MANIFEST}: reading its {len(manifest['shards'])} shards "
              f"({manifest['tokens']:,} tokens) as one data set, each whole by its header (llm.c's format); "
              f"python fineweb.py --index {args.data_dir} would record them")
    return data_fingerprint(args.data_dir)  # (see checkpoint.same_data)


def make_loaders(args, d, vocab_size):
    """The train and validation loaders of --data_dir, token ids checked against vocab_size."""
    train_loader = DataLoaderLite(args.batch_size, args.seq_len, d.rank, d.world_size, "train", args.data_dir,
                                  step_tokens=args.total_batch_size, vocab_size=vocab_size, verbose=d.master)
    # validation reads the same batches at any number of ranks (see validation_loss)
    val_loader = DataLoaderLite(args.batch_size, args.seq_len, 0, 1, "val", args.data_dir, vocab_size=vocab_size,
                                verbose=d.master)
    return train_loader, val_loader


def grad_accum_steps_for(args, world_size):
    """Micro-steps per optimizer step: each of world_size processes reads batch_size * seq_len
    tokens a micro-step, and a step is total_batch_size tokens, whatever the number of GPUs."""
    tokens_per_micro_step = args.batch_size * args.seq_len * world_size
    if args.total_batch_size % tokens_per_micro_step:
        raise UserError(
            f"--total_batch_size {args.total_batch_size} is not divisible by --batch_size * --seq_len * "
            f"world_size = {args.batch_size} * {args.seq_len} * {world_size} = {tokens_per_micro_step}; pick "
            f"--total_batch_size as a multiple of {tokens_per_micro_step} or change --batch_size"
        )
    return args.total_batch_size // tokens_per_micro_step


def train(args, d):
    say = print if d.master else lambda *a, **k: None  # rank 0 prints, logs and writes checkpoints
    device_type = torch.device(d.device).type

    # ---- the checkpoint to resume (its flags checked), or a fresh --log_dir; then the model
    ckpt, resume_path, changed = checkpoint.find_resume_checkpoint(args, d)
    data_id = prepare_data(args, d)
    model = build_model(args, ckpt)
    model.to(d.device)
    configure_tf32(device_type)
    autocast, scaler = autocast_and_scaler(device_type, args.dtype)
    if args.batch_size == "auto":  # the smallest answer of all ranks
        max_batch_size = PRESETS[args.preset].get("batch_size", get_parser().get_default("batch_size"))
        args.batch_size = all_reduce_min(auto_batch_size(model, args.seq_len, max_batch_size, autocast, d.device), d)
        say(f"--batch_size auto: {args.batch_size} sequences of {args.seq_len} tokens fit")
    grad_accum_steps = grad_accum_steps_for(args, d.world_size)

    # ---- data
    train_loader, val_loader = make_loaders(args, d, model.config.vocab_size)
    hella_examples = load_hellaswag(args, d) if args.hellaswag else None

    # ---- FSDP, the optimizer (of the sharded parameters), the state of a resumed run
    if args.fsdp:
        apply_fsdp(model, args.dtype)
    optimizer = model.configure_optimizers(args.weight_decay, args.max_lr, device_type, verbose=d.master,
                                           optimizer=args.optimizer, muon_lr=args.muon_lr)
    start_step, val_loss, run_id = 0, None, uuid.uuid4().hex
    if ckpt is not None:
        start_step, val_loss, run_id = checkpoint.restore(ckpt, resume_path, model, optimizer, scaler, train_loader)
        say(f"resuming {resume_path} at step {start_step}" + "".join(
            f"; --{k} {old} -> {new}" for k, (old, new) in changed.items()))
        del ckpt  # the weights and optimizer state live on in the model: free the host copy
    checkpoint.start_log_dir(args, d.master)
    logger = runlog.Logger(args.log_dir, resume_step=start_step if args.resume else None) if d.master else None

    # ---- torch.compile and DDP. model is the GPT itself, which checkpoints store
    train_model, infer_model = wrap_model(model, d, args.compile, args.fsdp)
    peak = run_peak_flops(d, args.dtype)
    say(f"model: {model.config}, {model.num_params():,} parameters")
    say(f"total_batch_size {args.total_batch_size} tokens = batch_size {args.batch_size} * seq_len {args.seq_len} "
        f"* world_size {d.world_size} * grad_accum_steps {grad_accum_steps}")
    min_lr = args.max_lr * args.min_lr_ratio
    end_step = args.stop_at_step or args.max_steps
    # said before the first evaluation and step, which take minutes for a large model on a CPU
    say(f"training steps {start_step}-{end_step} ({runlog.human((end_step - start_step) * args.total_batch_size)} tokens)"
        + (", evaluating first" if start_step % args.eval_every == 0 and not args.resume else "")
        + "; a line follows each step")
    losses, last_eval, t_start, t_first = [], None, time.perf_counter(), None

    # ---- the loop. `step` counts the optimizer steps done so far: evaluation and checkpoints at
    # step s see the weights after s updates
    for step in range(start_step, end_step + 1):
        last_step = step == end_step
        # (a resumed run's first step was evaluated before its checkpoint was written)
        if (step % args.eval_every == 0 or step == args.max_steps) and not (args.resume and step == start_step):
            event = evaluate(step, args, model, train_model, infer_model, val_loader, hella_examples, autocast, d)
            val_loss, last_eval = event["val_loss"], event
            if d.master:
                logger.log_evaluation(event, args)
        if step > start_step and (step % args.save_every == 0 or last_step):
            state = {"scaler": scaler.state_dict(), "run_id": run_id, "train_loader": train_loader.state_dict(),
                     "val_loss": val_loss, "data_fingerprint": data_id}
            say(f"saved {checkpoint.save(args, step, model, optimizer, state, d)}")
        if last_step:
            say(runlog.summary(start_step, end_step, args.total_batch_size, time.perf_counter() - t_start, last_eval,
                               val_loss, checkpoint.latest_checkpoint(args.log_dir) if d.master else None))
            break

        # ---- one optimizer step
        t0 = time.perf_counter()
        lr = get_lr(step, args.max_lr, min_lr, args.warmup_steps, args.max_steps, args.lr_schedule, args.cooldown_frac)
        loss = forward_backward(train_model, train_loader, grad_accum_steps, autocast, scaler, d)
        train_loss = loss.item()  # waits for this step's work on the device
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"the training loss is {train_loss} at step {step}; stopping without updating the weights. The last "
                f"good checkpoint is {checkpoint.latest_checkpoint(args.log_dir) or 'none'}: lower --max_lr, or resume with --resume"
            )
        norm, skipped = optimizer_step(optimizer, scaler, lr, args.grad_clip)
        sync(d.device)
        dt = time.perf_counter() - t0
        # time per step for the ETA: the mean since the first step (which compiles), evaluations included
        t_first = t_first or time.perf_counter()
        per_step = (time.perf_counter() - t_first) / (step - start_step) if step > start_step else dt
        losses.append(train_loss)
        if d.master:
            tok_s = args.total_batch_size / dt
            if peak and model.estimate_mfu(tok_s, args.seq_len, peak) > 1:  # a CPU peak timed on a busier machine
                peak = raise_peak(peak, model.flops_per_token(args.seq_len) * tok_s, d, args.dtype)
            mfu = model.estimate_mfu(tok_s, args.seq_len, peak) if peak else None
            logger.log(step=step, train_loss=train_loss, lr=lr, grad_norm=norm.item(), dt_ms=dt * 1000,
                       tokens_per_sec=tok_s, **({"mfu": mfu} if mfu is not None else {}),
                       **({"skipped": True, "loss_scale": scaler.get_scale()} if skipped else {}))
            if step % args.log_every == 0 or step == end_step - 1 or skipped:
                print(f"step {step:5d} | loss {train_loss:.6f} | lr {lr:.4e} | norm {norm.item():.4f} | "
                      f"dt {dt * 1000:.1f}ms | tok/sec {tok_s:,.0f}" + (f" | MFU {mfu * 100:.1f}%" if mfu else "")
                      + f" | {runlog.progress(step, end_step, args.total_batch_size, per_step)}"
                      + (f" | float16 overflow: step skipped, loss scale now {scaler.get_scale():g}" if skipped else ""))
    return {"losses": losses, "val_loss": val_loss, "model": model}


@contextlib.contextmanager
def lock_log_dir(log_dir, d):
    """log_dir held by this run until it ends (rank 0 takes the lock; every rank meets its refusal)."""
    lock = error = None
    if d.master:
        try:
            lock = runlog.LogDirLock(log_dir)
        except UserError as e:
            error = e
    error = broadcast_from_master(error, d)
    if error:
        raise error
    try:
        yield
    finally:
        if lock:
            lock.release()


def run(argv=None):
    args = parse_args(argv, description=__doc__)
    if args.consolidate:
        path, wants = args.consolidate, "give a model_XXXXX folder that train_gpt2.py --fsdp wrote"
        if not os.path.exists(path):
            raise UserError(f"--consolidate {path} does not exist; {wants}")
        if not os.path.isdir(path):
            already = " (a single-file checkpoint already: use it as it is)" if path.endswith(".pt") else ""
            raise UserError(f"--consolidate {path} is a file, not a folder{already}; {wants}")
        if not os.path.isfile(os.path.join(path, checkpoint.TRAIN_STATE)):
            raise UserError(f"--consolidate {path} is a folder without {checkpoint.TRAIN_STATE}, not a sharded "
                            f"checkpoint; {wants}")
        print(f"wrote {checkpoint.consolidate_checkpoint(args.consolidate)}")
        return None
    check_args(args)
    if args.fsdp and "RANK" not in os.environ:
        raise UserError("--fsdp runs under torchrun: torchrun --standalone --nproc_per_node=N train_gpt2.py --fsdp (N may be 1)")
    d = setup_distributed(args.device)
    try:
        with lock_log_dir(args.log_dir, d):
            return train(args, d)
    except UserError:
        raise  # every rank meets it; rank 0 says it
    except BaseException:
        if d.ddp:
            print(f"[rank {d.rank}] failed", file=sys.stderr, flush=True)
        raise
    finally:
        if d.ddp and dist.is_initialized():
            dist.destroy_process_group()


def main(argv=None):
    return exit_on_user_error("train_gpt2.py", run, argv)


if __name__ == "__main__":
    main()
