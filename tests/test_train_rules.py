"""The rules of a training run that a whole run would not show: float16's unscaled clipping and its
loss scale across --resume, the flags --resume refuses, what --overwrite may delete and when, the
log kept on resume, HellaSwag's two accuracies, the vocabulary checks of both splits (with the
model's vocab_size under --init_from), and --activation_checkpointing reaching the model. Each
test was seen to fail with its bug planted by hand: unit-level calls where they suffice, a
start-up that stops before training where the run is what matters."""

import argparse
import contextlib
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

import checkpoint
import train_args
import train_gpt2
from common import UserError
from device import autocast_and_scaler
from runlog import Logger
from shards import ShardError, write_manifest, write_shard
# data_dir: test_train.py's fixture of shards, shared
from test_train import ONE_CPU, TINY, ListLoader, data_dir, fake_step_data, read_log, tiny_model  # noqa: F401


# -----------------------------------------------------------------------------
# float16: the loss scaler


def one_step(dtype, overflow=False, scaler=None):
    """(gradient norm, skipped, scaler) of one optimizer step of the tiny model on fixed data."""
    model = tiny_model()
    optimizer = model.configure_optimizers(0.1, 1e-3, "cpu")
    autocast, default_scaler = autocast_and_scaler("cpu", dtype)
    scaler = scaler or default_scaler
    train_gpt2.forward_backward(model, ListLoader(fake_step_data(2, 16, 1)), 1, autocast, scaler, ONE_CPU)
    if overflow:  # as float16 gives when the loss scale is too high
        model.lm_head.weight.grad[0, 0] = float("inf")
    norm, skipped = train_gpt2.optimizer_step(optimizer, scaler, 1e-3, 1.0)
    return norm.item(), skipped, scaler


def test_float16_step_clips_and_logs_the_true_gradient_norm():
    """Under float16 the backward runs on the loss times 65536; the norm that is clipped and logged
    is the true gradient's: the float32 step's, up to float16's rounding of the forward pass."""
    norm16, skipped, scaler = one_step("float16")
    norm32, _, _ = one_step("float32")
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0 and not skipped
    assert norm16 == pytest.approx(norm32, rel=1e-3), (norm16, norm32)  # measured: 4e-5 apart


def test_loss_scale_after_a_resumed_overflow():
    """An overflow halves the loss scale (65536 -> 32768); a checkpoint holds the scaler, and the
    resumed run continues from 32768: its next overflow halves it to 16384, not to 32768 again."""
    _, skipped, scaler = one_step("float16", overflow=True)
    assert skipped and scaler.get_scale() == 32768.0
    model = tiny_model()
    optimizer = model.configure_optimizers(0.1, 1e-3, "cpu")
    resumed = autocast_and_scaler("cpu", "float16")[1]
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "train_loader": {"shard": 0, "position": 0}, "step": 7, "val_loss": 3.0, "run_id": "r"}
    loader = argparse.Namespace(load_state_dict=lambda state: None)
    assert checkpoint.restore(ckpt, "model_00007.pt", model, optimizer, resumed, loader) == (7, 3.0, "r")
    assert resumed.get_scale() == 32768.0
    _, skipped, resumed = one_step("float16", overflow=True, scaler=resumed)
    assert skipped and resumed.get_scale() == 16384.0


def test_float32_checkpoint_resumes_with_float16():
    """A float32 run's checkpoint holds a disabled scaler's (empty) state; resumed with --dtype
    float16 the scaler starts at its initial scale instead of failing to load it."""
    model = tiny_model()
    optimizer = model.configure_optimizers(0.1, 1e-3, "cpu")
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": autocast_and_scaler("cpu", "float32")[1].state_dict(),
            "train_loader": {"shard": 0, "position": 0}, "step": 2, "val_loss": None, "run_id": "r"}
    scaler = autocast_and_scaler("cpu", "float16")[1]
    checkpoint.restore(ckpt, "model_00002.pt", model, optimizer, scaler, argparse.Namespace(load_state_dict=lambda s: None))
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0


@pytest.mark.parametrize("dtype, enabled", [("float16", True), ("bfloat16", False), ("float32", False)])
def test_only_float16_scales_the_loss(dtype, enabled):
    assert autocast_and_scaler("cpu", dtype)[1].is_enabled() is enabled


# -----------------------------------------------------------------------------
# --resume: the flags that define a run

# the flags that define a GPT-2 run, written here independently of checkpoint.RUN_FLAGS (a flag
# dropped from it is then still tried), with a value other than TINY's
GPT2_RUN_FLAGS = {
    "n_layer": 3, "n_head": 4, "n_embd": 64, "block_size": 64, "vocab_size": 50432, "init_from": "gpt2",
    "seq_len": 8, "total_batch_size": 256, "data_dir": "/elsewhere/shards", "max_lr": 2e-2, "min_lr_ratio": 0.5,
    "warmup_steps": 3, "weight_decay": 0.2, "grad_clip": 0.5, "seed": 2,
}


def tiny_args(*flags):
    return train_args.parse_args(["--data_dir", "shards", "--log_dir", "log", *TINY, "--total_batch_size", "64", *flags])


def other_value(flag, value):
    """A value of flag other than value, of the same kind."""
    if flag in GPT2_RUN_FLAGS:
        return GPT2_RUN_FLAGS[flag]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return "gpt2" if value is None else value + "_other"


@pytest.mark.parametrize("flag", sorted(set(checkpoint.RUN_FLAGS) | set(GPT2_RUN_FLAGS)))
def test_resume_refuses_a_change_of_every_run_defining_flag(flag):
    args = tiny_args()
    saved = {**vars(args), flag: other_value(flag, getattr(args, flag))}
    assert saved[flag] != getattr(args, flag)
    message = f"made with --{flag} {saved[flag]}, this command says --{flag} {getattr(args, flag)};"
    if flag == "data_dir":  # a checkpoint without its data's fingerprint (checkpoint.same_data): by path
        message = f"--data_dir shards does not hold the data the run was trained on (its --data_dir {saved[flag]});"
    with pytest.raises(UserError, match=re.escape(message)):
        checkpoint.check_resume(args, {"args": saved}, "log/model_00002.pt")


def test_resume_compares_data_dir_as_a_path(tmp_path, monkeypatch):
    """--data_dir shards and --data_dir /abs/.../shards are the same data: not a change (for a
    checkpoint that did not record its data's fingerprint; test_data_interop tests those)."""
    monkeypatch.chdir(tmp_path)
    args = tiny_args()
    saved = {**vars(args), "data_dir": str(tmp_path / "shards"), "max_steps": 9}
    changed = checkpoint.check_resume(args, {"args": saved}, "log/model_00002.pt")  # no UserError
    assert changed["max_steps"] == (9, args.max_steps)


# -----------------------------------------------------------------------------
# --overwrite: only a new run's, and only once it has been accepted


def fake_previous_run(log_dir):
    os.makedirs(log_dir, exist_ok=True)
    for name in ("model_00002.pt", "log.jsonl", "loss.png"):
        (log_dir / name).write_bytes(b"the previous run's")
    return sorted(os.listdir(log_dir))


def test_overwrite_with_resume_deletes_nothing(tmp_path):
    before = fake_previous_run(tmp_path)
    args = tiny_args("--log_dir", str(tmp_path), "--overwrite", "--resume")
    checkpoint.start_log_dir(args, master=True)
    assert sorted(os.listdir(tmp_path)) == before
    checkpoint.start_log_dir(tiny_args("--log_dir", str(tmp_path), "--overwrite"), master=True)
    assert os.listdir(tmp_path) == []  # without --resume it deletes them


def test_overwrite_deletes_nothing_when_start_up_fails(data_dir, tmp_path, capsys):
    """Data refused at start-up (a token id beyond the vocabulary): the previous run stays whole."""
    d = tmp_path / "data"
    shutil.copytree(data_dir, d)
    write_shard(str(d / "test_train_000002.bin"), np.full(800, 50300))
    write_manifest(str(d))
    before = fake_previous_run(tmp_path / "log")
    with pytest.raises(SystemExit) as e:
        train_gpt2.main(["--data_dir", str(d), "--log_dir", str(tmp_path / "log"), *TINY, "--total_batch_size", "64",
                         "--max_steps", "2", "--vocab_size", "50257", "--overwrite"])
    assert e.value.code == 2 and "test_train_000002.bin" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "log")) == before
    assert (tmp_path / "log" / "model_00002.pt").read_bytes() == b"the previous run's"


# -----------------------------------------------------------------------------
# log.jsonl on resume


def test_resumed_log_keeps_the_evaluations_up_to_the_checkpoint(tmp_path):
    """A run evaluated at 0 and 4, checkpointed at 4 and killed at 5: resumed at 4, the log keeps
    the steps before 4 and both evaluations (the one at 4 is not done again), and drops what came
    after the checkpoint."""
    events = [{"step": 0, "val_loss": 9.0}] + [{"step": s, "train_loss": 10.0 - s} for s in range(5)]
    events += [{"step": 4, "val_loss": 6.0}, {"step": 5, "train_loss": 5.0}]
    events.sort(key=lambda e: (e["step"], "train_loss" in e))
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    Logger(str(tmp_path), resume_step=4)
    kept = read_log(tmp_path)
    assert [e for e in kept if "val_loss" in e] == [{"step": 0, "val_loss": 9.0}, {"step": 4, "val_loss": 6.0}]
    assert [e["step"] for e in kept if "train_loss" in e] == [0, 1, 2, 3]


# -----------------------------------------------------------------------------
# evaluation: HellaSwag's two accuracies


def test_hellaswag_acc_and_acc_norm_come_from_their_own_counts(monkeypatch):
    monkeypatch.setattr(train_gpt2.hellaswag, "evaluate",
                        lambda *a, **k: {"n": 8, "num_correct": 2, "num_correct_norm": 5})
    model = tiny_model()
    x = fake_step_data(2, 16, 1)[0]
    val_loader = argparse.Namespace(reset=lambda: None, next_batch=lambda: (x[:, :-1], x[:, 1:]))
    args = argparse.Namespace(val_steps=1, num_samples=0)
    event = train_gpt2.evaluate(3, args, model, model, model, val_loader, ["examples"], contextlib.nullcontext(), ONE_CPU)
    assert (event["hellaswag_acc"], event["hellaswag_acc_norm"], event["hellaswag_n"]) == (2 / 8, 5 / 8, 8)


# -----------------------------------------------------------------------------
# the vocabulary checks


def loader_args(d):
    return argparse.Namespace(preset="gpt2-124m", data_dir=str(d), batch_size=4, seq_len=16, total_batch_size=64)


def test_the_validation_shard_is_checked_against_the_vocabulary(data_dir, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(data_dir, d)
    write_shard(str(d / "test_val_000000.bin"), np.full(2000, 50300))
    write_manifest(str(d))
    train_gpt2.make_loaders(loader_args(d), ONE_CPU, 50304)  # 50300 < 50304: fine
    with pytest.raises(ShardError, match=r"test_val_000000.bin holds token id 50300.*vocab_size is 50257"):
        train_gpt2.make_loaders(loader_args(d), ONE_CPU, 50257)


def test_init_from_checks_the_data_against_the_models_vocabulary(data_dir, tmp_path, capsys):
    """--init_from a GPT-2 of 50257 tokens (not --vocab_size's default 50304): a token id of 50300
    in a shard is refused at start-up, naming the shard and the model's vocab_size."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    hf.save_pretrained(str(tmp_path / "hf"))
    d = tmp_path / "data"
    shutil.copytree(data_dir, d)
    write_shard(str(d / "test_train_000002.bin"), np.full(800, 50300))
    write_manifest(str(d))
    with pytest.raises(SystemExit) as e:
        train_gpt2.main(["--data_dir", str(d), "--log_dir", str(tmp_path / "log"), "--init_from", str(tmp_path / "hf"),
                         "--seq_len", "16", "--batch_size", "4", "--dtype", "float32", "--no-compile", "--no-hellaswag",
                         "--num_samples", "0", "--device", "cpu", "--total_batch_size", "64", "--max_steps", "2",
                         "--warmup_steps", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "test_train_000002.bin holds token id 50300" in err and "vocab_size is 50257" in err


# -----------------------------------------------------------------------------
# --activation_checkpointing


def test_activation_checkpointing_reaches_the_model_and_recomputes_each_block_once():
    """train_gpt2.py's flag: a training step forwards every block twice (once more in backward),
    without the flag once."""
    for flag, forwards in (([], 1), (["--activation_checkpointing"], 2)):
        args = tiny_args("--n_layer", "2", *flag)
        model = train_gpt2.build_model(args, None)
        assert model.activation_checkpointing is bool(flag)
        calls = []
        for i, block in enumerate(model.transformer.h):
            # a pre-hook: the recomputation stops once backward has what it needs, before the block's end
            block.register_forward_pre_hook(lambda m, inp, i=i: calls.append(i))
        data = fake_step_data(4, 16, 1)
        train_gpt2.forward_backward(model, ListLoader(data), 1, contextlib.nullcontext(),
                                    autocast_and_scaler("cpu", "float32")[1], ONE_CPU)
        assert sorted(calls) == sorted([0, 1] * forwards), flag
