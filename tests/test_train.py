"""train_gpt2.py: the LR schedule, flag checks, gradient accumulation, DDP equivalence, exact
resume, atomic checkpoints, the non-finite-loss stop, golden losses and torch.compile."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_gpt2
from fineweb import write_shard
from model import GPT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--seq_len", "16",
        "--batch_size", "4", "--dtype", "float32", "--no-compile", "--no-hellaswag", "--num_samples", "0",
        "--warmup_steps", "2", "--max_lr", "1e-2", "--device", "cpu", "--seed", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A val shard and three train shards of uneven size: a repeating pattern of 97 GPT-2 token ids
    with 10% of the positions random, so that a tiny model's loss falls within a few steps."""
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 50257, 97)
    for i, n in enumerate([2000, 1500, 700, 1100]):
        tokens = pattern[np.arange(n) % 97]
        noise = rng.random(n) < 0.1
        tokens[noise] = rng.integers(0, 50257, noise.sum())
        split = "val" if i == 0 else "train"
        write_shard(str(d / f"test_{split}_{i:06d}.bin"), tokens)
    return str(d)


def run(data_dir, log_dir, *flags):
    return train_gpt2.main(["--data_dir", data_dir, "--log_dir", str(log_dir), *TINY, *flags])


def read_log(log_dir):
    with open(os.path.join(log_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_lr_schedule():
    max_lr, min_lr, warmup, max_steps = 6e-4, 6e-5, 715, 19073
    lr = lambda s: train_gpt2.get_lr(s, max_lr, min_lr, warmup, max_steps)  # noqa: E731
    assert lr(0) == pytest.approx(max_lr / warmup)  # linear warmup from the first step
    assert lr(warmup - 1) == pytest.approx(max_lr)  # end of warmup
    assert lr(warmup) == pytest.approx(max_lr)  # cosine starts at its top
    mid = warmup + (max_steps - warmup) // 2
    assert lr(mid) == pytest.approx((max_lr + min_lr) / 2, rel=1e-3)  # half way down the cosine
    last = min_lr + 0.5 * (1 + math.cos(math.pi * (max_steps - 1 - warmup) / (max_steps - warmup))) * (max_lr - min_lr)
    assert lr(max_steps - 1) == pytest.approx(last) and min_lr < lr(max_steps - 1) < min_lr * 1.0001
    assert lr(max_steps) == lr(max_steps + 1000) == min_lr


@pytest.mark.parametrize("flags, message", [
    (["--total_batch_size", "100"], "--total_batch_size 100 is not divisible by --batch_size * --seq_len * world_size = 4 * 16 * 1 = 64"),
    (["--seq_len", "64"], "--seq_len 64 is longer than the model's --block_size 32"),
    (["--n_embd", "33"], "--n_embd 33 is not divisible by --n_head 2"),
    (["--warmup_steps", "50", "--max_steps", "10"], "--warmup_steps 50 is more than --max_steps 10"),
    (["--vocab_size", "1000"], "--vocab_size 1000 is smaller than GPT-2's tokenizer"),
    (["--batch_size", "0"], "--batch_size must be positive"),
])
def test_bad_flags(data_dir, tmp_path, flags, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("'", ".")):
        run(data_dir, tmp_path, "--total_batch_size", "128", "--max_steps", "2", *flags)


def test_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data_dir .*nowhere does not exist.*fineweb.py"):
        run(str(tmp_path / "nowhere"), tmp_path / "log", "--total_batch_size", "64", "--max_steps", "2")


def test_grad_accum_equivalence(data_dir, tmp_path):
    # 4 micro-steps of batch 1 against 1 micro-step of batch 4: the same tokens, the same update
    a = run(data_dir, tmp_path / "a", "--batch_size", "4", "--total_batch_size", "64", "--max_steps", "4")
    b = run(data_dir, tmp_path / "b", "--batch_size", "1", "--total_batch_size", "64", "--max_steps", "4")
    torch.testing.assert_close(torch.tensor(a["losses"]), torch.tensor(b["losses"]), rtol=0, atol=1e-5)
    # the summation order differs, and Adam divides by sqrt(v): an element with a gradient near
    # zero can differ by a small fraction of one update (lr 1e-2), never by more
    for (k, pa), pb in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-4, msg=lambda m: f"{k}: {m}")


# the first losses of `run(data_dir, ..., --total_batch_size 128 --max_steps 5)`, recorded from this
# implementation: any change to the model's math, init, data order or optimizer shows here
GOLDEN_LOSSES = [10.830890655517578, 10.671768188476562, 10.408222198486328, 9.99322509765625, 9.674957275390625]


def test_golden_losses(data_dir, tmp_path):
    out = run(data_dir, tmp_path, "--total_batch_size", "128", "--max_steps", "5")
    print("losses:", out["losses"])
    assert GOLDEN_LOSSES is not None
    torch.testing.assert_close(torch.tensor(out["losses"]), torch.tensor(GOLDEN_LOSSES), rtol=0, atol=1e-4)


def test_resume_is_exact(data_dir, tmp_path):
    flags = ["--total_batch_size", "128", "--max_steps", "8", "--eval_every", "3", "--save_every", "100"]
    straight = run(data_dir, tmp_path / "straight", *flags)
    first = run(data_dir, tmp_path / "split", *flags, "--stop_at_step", "4")
    assert os.path.exists(tmp_path / "split" / "model_00004.pt")
    second = run(data_dir, tmp_path / "split", *flags, "--resume")
    assert first["losses"] + second["losses"] == straight["losses"]
    for k, v in straight["model"].state_dict().items():
        torch.testing.assert_close(second["model"].state_dict()[k], v, rtol=0, atol=0, msg=k)
    # the resumed log continues the first one: every step once, evaluations at 0, 3, 6 and 8
    log = read_log(tmp_path / "split")
    assert [e["step"] for e in log if "train_loss" in e] == list(range(8))
    assert [e["step"] for e in log if "val_loss" in e] == [0, 3, 6, 8]
    assert [e["val_loss"] for e in log if "val_loss" in e] == [e["val_loss"] for e in read_log(tmp_path / "straight") if "val_loss" in e]


def test_checkpoint_is_plain_and_loadable(data_dir, tmp_path):
    run(data_dir, tmp_path, "--total_batch_size", "64", "--max_steps", "2")
    ckpt = torch.load(tmp_path / "model_00002.pt", weights_only=True)  # no pickled classes
    assert ckpt["step"] == 2 and ckpt["config"]["n_layer"] == 2
    assert not [k for k in ckpt["model"] if k.startswith(("_orig_mod.", "module."))]
    assert {"optimizer", "train_loader", "rng", "args", "val_loss"} <= set(ckpt)


def test_interrupted_checkpoint_leaves_previous(data_dir, tmp_path, monkeypatch):
    flags = ["--total_batch_size", "64", "--max_steps", "4", "--save_every", "2"]
    real_save = torch.save

    def crash_midway(obj, f, *a, **k):
        if obj["step"] == 4:
            f.write(b"half a checkpoint")
            raise KeyboardInterrupt  # Ctrl-C in the middle of the write
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        run(data_dir, tmp_path, *flags)
    assert sorted(os.listdir(tmp_path)) == ["log.jsonl", "loss.png", "model_00002.pt"]
    assert train_gpt2.latest_checkpoint(str(tmp_path)).endswith("model_00002.pt")
    assert torch.load(tmp_path / "model_00002.pt", weights_only=True)["step"] == 2


def test_non_finite_loss_stops(data_dir, tmp_path, monkeypatch):
    real_forward = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None):
        logits, loss = real_forward(self, idx, targets)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] == 4:  # step 3 (one micro-step per step)
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3.*model_00002\.pt"):
        run(data_dir, tmp_path, "--total_batch_size", "64", "--max_steps", "6", "--save_every", "2")
    assert torch.load(tmp_path / "model_00002.pt", weights_only=True)["step"] == 2


def test_ddp_matches_single_process(data_dir, tmp_path):
    # 2 ranks with batch 2 each against 1 process with 2 micro-steps of batch 2: the same tokens
    # (the ranks' interleaved chunks are the single process's consecutive ones), the same updates
    flags = ["--data_dir", data_dir, *TINY, "--batch_size", "2", "--total_batch_size", "64", "--max_steps", "6", "--eval_every", "3"]
    # each rank averages val_steps batches of its own, so 2 ranks x 3 batches = 1 process x 6
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train_gpt2.py"), *flags, "--val_steps", "3", "--log_dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run(data_dir, tmp_path / "single", *flags[2:], "--val_steps", "6")
    ddp_log = read_log(tmp_path / "ddp")
    ddp_losses = [e["train_loss"] for e in ddp_log if "train_loss" in e]
    diff = max(abs(a - b) for a, b in zip(ddp_losses, single["losses"]))
    print(f"largest DDP vs single-process loss difference over {len(ddp_losses)} steps: {diff:.3e}")
    assert len(ddp_losses) == 6 and diff < 1e-5
    ddp_val = [e["val_loss"] for e in ddp_log if "val_loss" in e]
    single_val = [e["val_loss"] for e in read_log(tmp_path / "single") if "val_loss" in e]
    torch.testing.assert_close(torch.tensor(ddp_val), torch.tensor(single_val), rtol=0, atol=1e-5)
    # rank 0 alone prints: one line per step
    assert proc.stdout.count("step     0 | loss") == 1


def write_hellaswag(path, n):
    """n examples in the official hellaswag_val.jsonl format, endings of different lengths."""
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({
                "ind": i, "activity_label": "Cooking", "ctx_a": f"A man takes a pan {i}.", "ctx_b": "he",
                "ctx": f"A man takes a pan {i}. he", "split": "val", "split_type": "indomain", "label": i % 4,
                "endings": ["puts it on the stove.", "eats it" + " slowly" * (i % 3) + ".", "runs away.", "sings."],
                "source_id": f"test~{i}",
            }) + "\n")


def test_compiled_run_evaluates_hellaswag_and_samples(data_dir, tmp_path):
    """torch.compile on: training, validation, HellaSwag and sampling all run inside one compiled
    run, with the same losses as eager and a bounded number of compiled graphs (no recompilation
    per sample length or per HellaSwag batch)."""
    pytest.importorskip("hellaswag")
    from torch._dynamo.utils import counters

    hs = str(tmp_path / "hellaswag_val.jsonl")
    write_hellaswag(hs, 6)
    flags = ["--total_batch_size", "64", "--max_steps", "4", "--eval_every", "2", "--hellaswag",
             "--hellaswag_file", hs, "--num_samples", "2", "--sample_len", "20"]
    eager = run(data_dir, tmp_path / "eager", *flags)
    torch._dynamo.reset()
    counters.clear()
    compiled = run(data_dir, tmp_path / "compiled", *flags, "--compile")
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    print(f"compiled graphs: {graphs}")
    # training (1), validation in eval mode (1), HellaSwag and sampling (one dynamic-shape graph,
    # which may be specialised once more for the single-row prompt)
    assert 3 <= graphs <= 5, f"{graphs} compiled graphs"
    torch.testing.assert_close(torch.tensor(compiled["losses"]), torch.tensor(eager["losses"]), rtol=1e-4, atol=1e-4)
    log = read_log(tmp_path / "compiled")
    evals = [e for e in log if "val_loss" in e]
    assert [e["step"] for e in evals] == [0, 2, 4]
    ref = [e for e in read_log(tmp_path / "eager") if "val_loss" in e]
    for e, r in zip(evals, ref):
        assert e["hellaswag_n"] == 6 and e["hellaswag_acc_norm"] == r["hellaswag_acc_norm"]
        assert e["val_loss"] == pytest.approx(r["val_loss"], abs=1e-4)
        assert len(e["samples"]) == 2 and all(s.startswith("Hello, I'm a language model,") for s in e["samples"])


def test_hellaswag_rows_longer_than_the_context(data_dir, tmp_path):
    """A model whose block_size (32) is shorter than some HellaSwag rows still evaluates them
    (the scorer crops the context from the left) instead of failing in the forward."""
    pytest.importorskip("hellaswag")
    hs = tmp_path / "hellaswag_val.jsonl"
    long_ctx = "A man takes a pan from the shelf, washes it carefully in the sink and dries it with a towel. " * 2 + "he"
    hs.write_text(json.dumps({"ctx": long_ctx, "label": 1, "endings": ["a.", "puts it on the stove.", "c.", "d."]}) + "\n")
    run(data_dir, tmp_path / "log", "--total_batch_size", "64", "--max_steps", "2", "--eval_every", "2", "--hellaswag", "--hellaswag_file", str(hs))
    evals = [e for e in read_log(tmp_path / "log") if "val_loss" in e]
    assert [e["hellaswag_n"] for e in evals] == [1, 1]
