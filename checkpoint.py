"""
Checkpoints: our single-file format (model_XXXXX.pt: weights, AdamW state, loader position,
flags), the sharded folders of --fsdp (torch.distributed.checkpoint, readable at any number of
ranks) and their consolidation into one file, the rules of --resume, and loading a model from any
of its sources (a GPT-2 name, a Hugging Face folder, one of our checkpoints).
"""

import glob
import os
import re
import shutil
import warnings
from dataclasses import asdict

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from common import UserError, make_dirs, one_line, write_atomic
from model import GPT, HF_GPT2_NAMES, GPTConfig, is_hub_name
from parallel import broadcast_from_master
from shards import data_fingerprint

# the flags that define a run: --resume refuses to change them. Others (max_steps, cadences,
# batch_size, device, ...) may change between a checkpoint and its resumption, and are logged
RUN_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "init_from", "seq_len",
             "total_batch_size", "data_dir", "max_lr", "min_lr_ratio", "warmup_steps", "weight_decay",
             "grad_clip", "seed", "rotary", "qk_norm", "mlp_act", "norm", "tie_embeddings", "zero_init", "optimizer",
             "muon_lr", "lr_schedule", "cooldown_frac")
TRAIN_STATE = "train_state.pt"  # in a sharded checkpoint folder: everything but the tensors' shards


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


def save(args, step, model, optimizer, state, d):
    """The checkpoint of step in --log_dir: one file written by rank 0, or with --fsdp a folder that
    every rank writes its shards into (collective). state: the run's own (loader position, loss
    scaler, val loss, run id). Returns the path."""
    path = checkpoint_path(args.log_dir, step, sharded=args.fsdp)
    state = {**state, "step": step, "config": asdict(model.config), "args": vars(args)}
    if args.fsdp:
        save_sharded_checkpoint(path, model, optimizer, state, d.master)
    elif d.master:
        save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **state})
    return path


def restore(ckpt, path, model, optimizer, scaler, train_loader):
    """A checkpoint's optimizer, loss scaler and loader position (and, for a sharded folder, its
    weights into the sharded model; a single file's weights are loaded when the model is built).
    Returns (step, val_loss, run_id)."""
    if "model" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    else:  # a sharded folder, written at any number of ranks
        load_sharded_checkpoint(path, model, optimizer)
    if ckpt.get("scaler"):  # (empty from a run without float16, which may switch to it now)
        scaler.load_state_dict(ckpt["scaler"])
    train_loader.load_state_dict(ckpt["train_loader"])
    return ckpt["step"], ckpt["val_loss"], ckpt.get("run_id")


def save_checkpoint(path, state):
    """torch.save through the one atomic write: a crash or Ctrl-C mid-write leaves the previous
    checkpoints intact and never a half-written file under a checkpoint's name."""
    write_atomic(path, lambda f: torch.save(state, f))


def read_checkpoint(path, mmap=False, keys=("config",)):
    """A checkpoint's contents (of a sharded folder: all but the model and optimizer, which
    load_sharded_checkpoint reads); ValueError saying why when it is not one. weights_only: a
    checkpoint is plain tensors and numbers, so loading one from someone else cannot run code.
    mmap: tensors are read only when used (for a look at 'args'). keys: what it must hold besides
    the weights (a model needs its config; a run to resume needs its step and flags too)."""
    sharded = os.path.isdir(path)
    try:
        ckpt = torch.load(os.path.join(path, TRAIN_STATE) if sharded else path, map_location="cpu",
                          weights_only=True, mmap=mmap and not sharded)
    except Exception as e:  # truncated, corrupt, not a torch file: torch says it in many ways
        raise ValueError(f"torch.load cannot read it ({type(e).__name__}: {one_line(e, 80)})") from None
    if not isinstance(ckpt, dict) or not set(keys) <= set(ckpt) or not (sharded or "model" in ckpt):
        raise ValueError("not a train_gpt2.py checkpoint")
    return ckpt


def load_checkpoint(path, mmap=False):
    """read_checkpoint, with a UserError naming the file (and the one before it) for --resume."""
    try:
        return read_checkpoint(path, mmap, keys=("config", "step", "args"))
    except ValueError as e:
        earlier = [p for p in list_checkpoints(os.path.dirname(path) or ".") if os.path.abspath(p) != os.path.abspath(path)]
        earlier = [p for p in earlier if p < path] if os.path.basename(path).startswith("model_") else earlier
        hint = f"resume from the one before it: --resume {earlier[-1]}" if earlier else "no earlier checkpoint is beside it"
        raise UserError(f"checkpoint {path} cannot be read ({e}); it is truncated, corrupt or not a train_gpt2.py "
                        f"checkpoint; {hint}") from None


def check_resume(args, ckpt, path):
    """Refuse to continue a checkpoint under flags that define a different run, or on other data;
    describe the flags that may change and did."""
    saved = ckpt["args"]
    differ = [k for k in RUN_FLAGS if k in saved and k != "data_dir" and getattr(args, k) != saved[k]]
    if differ:
        raise UserError(
            f"--resume {path}: the checkpoint's run was made with "
            + ", ".join(f"--{k} {saved[k]}" for k in differ) + ", this command says "
            + ", ".join(f"--{k} {getattr(args, k)}" for k in differ)
            + "; these define the run and cannot change mid-run: give the checkpoint's values "
            f"(its preset was {saved.get('preset')}), or start a new run in another --log_dir"
        )
    if not same_data(args.data_dir, ckpt):
        raise UserError(
            f"--resume {path}: --data_dir {args.data_dir} does not hold the data the run was trained on (its "
            f"--data_dir {saved['data_dir']}" + (", whose shards' contents differ" if "data_fingerprint" in ckpt else "")
            + "); resume on that data set (a copy or a move of it is fine), or start a new run in another --log_dir"
        )
    ignore = ("resume", "overwrite", "log_dir")
    return {k: (saved[k], v) for k, v in vars(args).items() if k in saved and k not in ignore and saved[k] != v}


def same_data(data_dir, ckpt):
    """Whether data_dir holds the data set the checkpoint's run read: by content (shards.data_fingerprint)
    where the checkpoint recorded it, so that a copy or a move resumes and a regenerated data set
    does not; by path for older checkpoints, or while data_dir is missing (the cpu preset makes its
    corpus afresh, and the loader reports any other missing folder)."""
    if "data_fingerprint" in ckpt and os.path.isdir(data_dir):
        return data_fingerprint(data_dir) == ckpt["data_fingerprint"]
    return os.path.abspath(data_dir) == os.path.abspath(ckpt["args"]["data_dir"])


def find_resume_checkpoint(args, d):
    """(checkpoint, its path, the flags changed since) for --resume; (None, None, {}) for a new
    run, after checking that --log_dir holds no other run."""
    latest = latest_checkpoint(args.log_dir)
    if not args.resume:
        if latest and not args.overwrite:
            raise UserError(
                f"--log_dir {args.log_dir} already has checkpoints of another run ({latest}); "
                f"continue it with --resume, or pass --overwrite to delete them, or choose another --log_dir"
            )
        return None, None, {}
    # rank 0 resolves "latest", so that every rank loads the same file
    path = broadcast_from_master(latest if args.resume == "latest" else args.resume, d)
    if path is None or not os.path.exists(path):
        where = f"in --log_dir {args.log_dir}" if args.resume == "latest" else path
        raise UserError(f"--resume: no checkpoint {where} (on rank {d.rank}: the ranks of a multi-node run need "
                        f"a shared --log_dir); start without --resume")
    ckpt = load_checkpoint(path)
    if args.fsdp and "model" in ckpt:
        raise UserError(f"--resume {path}: a single-file checkpoint continues without --fsdp; --fsdp resumes "
                        f"the sharded checkpoint folders it writes")
    changed = check_resume(args, ckpt, path)
    if latest and ckpt.get("run_id") != load_checkpoint(latest, mmap=True).get("run_id"):
        raise UserError(f"--log_dir {args.log_dir} holds checkpoints of another run ({latest}); resume "
                        f"{path} into its own folder (--log_dir {os.path.dirname(path) or '.'}) or an empty one")
    return ckpt, path, changed


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
    make_dirs(args.log_dir)


# -----------------------------------------------------------------------------
# sharded checkpoints (--fsdp)


def save_sharded_checkpoint(ckpt_dir, model, optimizer, train_state, master):
    """Every rank writes its shards of the model and optimizer into the folder ckpt_dir (DCP's
    format), rank 0 adds train_state; collective. Written under a temporary name and renamed
    when complete, as write_atomic does for a file. With several nodes ckpt_dir must be shared."""
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
    hellaswag.py, sample.py (and save_pretrained) and --resume read. One process, the whole model
    and AdamW state in CPU memory (16 bytes a parameter)."""
    state = load_checkpoint(ckpt_dir)
    model = GPT(GPTConfig(**state["config"]))
    optimizer = model.configure_optimizers(weight_decay, state["args"]["max_lr"], "cpu")
    load_sharded_checkpoint(ckpt_dir, model, optimizer)
    out = ckpt_dir.rstrip("/") + ".pt"
    save_checkpoint(out, {**state, "model": model.state_dict(), "optimizer": optimizer.state_dict()})
    return out


# -----------------------------------------------------------------------------
# a model from any of its sources


def check_source(name, flag="--model"):
    """Refuse, before anything is loaded or fetched, a model source that cannot be one: neither a
    GPT-2 name nor a file nor a folder with config.json (--init_from: no checkpoint file)."""
    checkpoints = flag != "--init_from"  # --init_from takes GPT-2's weights only
    if name in HF_GPT2_NAMES or (checkpoints and os.path.isfile(name)):
        return
    if not os.path.isdir(name):
        raise UserError(f"{flag} {name} is neither one of {', '.join(HF_GPT2_NAMES)}, nor a Hugging Face directory"
                        + (", nor a train_gpt2.py checkpoint file (.pt)" if checkpoints else "") + "; check the path")
    if not os.path.isfile(os.path.join(name, "config.json")):
        raise UserError(f"{flag} {name} is a directory without config.json; give a Hugging Face GPT-2 directory "
                        f"(config.json + weights, as save_pretrained writes)" + (", or a checkpoint file .pt" if checkpoints else ""))


def load_model(name_or_path, device="cpu", flag="--model"):
    """A GPT, in eval mode on device, from a train_gpt2.py checkpoint (.pt), a Hugging Face GPT-2
    folder or one of OpenAI's GPT-2 names (--init_from: the last two only); a UserError naming
    flag when it cannot be had."""
    check_source(name_or_path, flag)
    try:
        if os.path.isfile(name_or_path):
            ckpt = read_checkpoint(name_or_path)
            model = GPT(GPTConfig(**ckpt["config"]))
            model.load_state_dict(ckpt["model"])
        else:
            model = GPT.from_pretrained(name_or_path)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise load_error(flag, name_or_path, e) from None
    return model.to(device).eval()


def load_error(flag, name, e):
    """The one line for a model source that check_source let through but that cannot be loaded:
    the hub unreachable for a GPT-2 name, or what the file or folder is not."""
    local = "a local Hugging Face GPT-2 directory" + (" or a train_gpt2.py checkpoint (.pt)" if flag != "--init_from" else "")
    if os.path.isfile(name):
        return UserError(f"{flag} {name}: could not load it as a train_gpt2.py checkpoint ({one_line(e)}); give a "
                         f"model_XXXXX.pt that train_gpt2.py wrote, a Hugging Face GPT-2 directory, or one of "
                         f"{', '.join(HF_GPT2_NAMES)}")
    if isinstance(e, OSError) and is_hub_name(name):
        return UserError(f"{flag} {name} is fetched from the Hugging Face hub, which could not be reached "
                         f"({one_line(str(e).partition(chr(10))[0])}); without a network, give {flag} {local}")
    return UserError(f"{flag} {name}: could not load it as a Hugging Face GPT-2 directory ({one_line(e)}); give a "
                     f"directory with config.json and the weights (as save_pretrained writes)"
                     + (", or a train_gpt2.py checkpoint (.pt)" if flag != "--init_from" else ""))
