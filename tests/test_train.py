"""train_gpt2.py: the LR schedule, flag checks, gradient accumulation, DDP equivalence, exact
resume, atomic checkpoints, the non-finite-loss stop, golden losses and torch.compile."""

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
import train_gpt2
from model import GPT, GPTConfig
from parallel import Dist
from shards import write_manifest, write_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--seq_len", "16",
        "--batch_size", "4", "--dtype", "float32", "--no-compile", "--no-hellaswag", "--num_samples", "0",
        "--warmup_steps", "2", "--max_lr", "1e-2", "--device", "cpu", "--seed", "1"]
ONE_CPU = Dist(ddp=False, rank=0, world_size=1, device="cpu")


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
    write_manifest(str(d))
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
    (["--n_layer", "0"], "--n_layer must be positive, got 0"),
    (["--warmup_steps", "50", "--max_steps", "10"], "--warmup_steps 50 is more than --max_steps 10"),
    (["--vocab_size", "1000"], "--vocab_size 1000 is smaller than GPT-2's tokenizer"),
    (["--batch_size", "0"], "--batch_size must be positive"),
    (["--grad_clip", "-1"], "--grad_clip must be a finite number >= 0, got -1.0"),
    (["--weight_decay", "-0.1"], "--weight_decay must be a finite number >= 0, got -0.1"),
    (["--max_lr", "nan"], "--max_lr must be a finite number > 0, got nan"),
    (["--max_lr", "inf"], "--max_lr must be a finite number > 0, got inf"),
    (["--min_lr_ratio", "nan"], "--min_lr_ratio must be in [0, 1], got nan"),
    (["--stop_at_step", "0"], "--stop_at_step 0 must be in [1, --max_steps 2]"),
    (["--device", "cuda"], "--device cuda: this machine has no CUDA GPU"),
    (["--device", "tpu"], "--device tpu: expected auto, cuda, cuda:N, mps or cpu"),
    (["--hellaswag", "--hellaswag_file", "nope.jsonl"], "--hellaswag_file nope.jsonl does not exist"),
    (["--batch_size", "four"], "argument --batch_size: expected a number of sequences or 'auto', got 'four'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags(data_dir, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        run(data_dir, tmp_path, "--total_batch_size", "128", "--max_steps", "2", *flags)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("train_gpt2.py: error: ") and message in err and "Traceback" not in err


def mixed_data_dir(d, data_dir):
    """Shards of a second data set added to a finished one."""
    import shutil

    shutil.copytree(data_dir, d)
    write_shard(str(d / "other_train_000001.bin"), np.arange(500))


def unfinished_data_dir(d, data_dir):
    """A data set whose fineweb.py run did not finish: one listed shard missing."""
    import shutil

    shutil.copytree(data_dir, d)
    os.remove(d / "test_train_000003.bin")


def malformed_hellaswag(d):
    d.mkdir()
    (d / "hs.jsonl").write_text('{"ctx": "a", "endings": ["b", "c"], "label": 0}\n')


@pytest.mark.parametrize("case, flags, message", [
    ("mixed", [], "other"),
    ("unfinished", [], "test_train_000003.bin"),
    ("vocab", ["--vocab_size", "50257"], "test_train_000002.bin"),
    ("hellaswag", ["--hellaswag", "--hellaswag_file", "{d}/hs.jsonl"], "hs.jsonl line 1"),
    ("preset", ["--preset", "cpu", "--data_dir", "{d}/data/pydocs"], "the cpu preset prepares its corpus in data/pydoc"),
])
def test_bad_data_is_refused_at_start_up(data_dir, tmp_path, capsys, case, flags, message):
    """Data that would train on the wrong thing, or drop an evaluation the user asked for, stops the
    run at start-up with one line naming the file; nothing is written."""
    d = tmp_path / "data"
    if case == "mixed":
        mixed_data_dir(d, data_dir)
    elif case == "unfinished":
        unfinished_data_dir(d, data_dir)
    elif case == "vocab":
        # a token id of 50300 in a shard, for a model whose vocabulary ends at 50257
        import shutil

        shutil.copytree(data_dir, d)
        write_shard(str(d / "test_train_000002.bin"), np.full(800, 50300))
        write_manifest(str(d))
    elif case == "hellaswag":
        malformed_hellaswag(d)
    flags = [f.format(d=d) for f in flags]
    with pytest.raises(SystemExit) as e:
        train_gpt2.main(["--data_dir", data_dir if case in ("hellaswag", "preset") else str(d), "--log_dir", str(tmp_path / "log"),
                         *TINY, "--total_batch_size", "64", "--max_steps", "2", *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("train_gpt2.py: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "log" / "model_00002.pt")


def test_missing_data_dir(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(str(tmp_path / "nowhere"), tmp_path / "log", "--total_batch_size", "64", "--max_steps", "2")
    assert re.search("--data_dir .*nowhere does not exist.*fineweb.py", capsys.readouterr().err)


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
    assert {"optimizer", "train_loader", "args", "val_loss", "run_id", "scaler"} <= set(ckpt)
    # nothing draws random numbers after the initialisation, so no RNG state is stored (a CUDA one
    # is per visible GPU and could not be restored on another number of GPUs)
    assert "rng" not in ckpt


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
    assert checkpoint.latest_checkpoint(str(tmp_path)).endswith("model_00002.pt")
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
    # val_steps batches in all, split across the ranks: the same val loss as one process
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train_gpt2.py"), *flags, "--val_steps", "6", "--log_dir", str(tmp_path / "ddp")]
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


def torchrun(nproc, *flags, timeout=300):
    """train_gpt2.py under torchrun with gloo, one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(ROOT, "train_gpt2.py"), *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode and "terminate called without an active exception" in proc.stderr and "--log_dir" in flags:
        # a rank aborted inside torch's C++ (seen once in ~10 runs of the modern FSDP test on a
        # loaded 2-core machine, never reproduced): one more launch into a fresh --log_dir, so that
        # a crash of the runtime is not read as a wrong result; a real failure fails twice
        shutil.rmtree(flags[flags.index("--log_dir") + 1], ignore_errors=True)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


def train_losses(log_dir):
    return [e["train_loss"] for e in read_log(log_dir) if "train_loss" in e]


def assert_weights_close(got, expected, embedding_atol=1e-5):
    """Within 1e-5, but for the key bias (c_attn.bias[C:2C]), within 1e-4: its true gradient is zero
    (a constant added to one query's scores does not change their softmax), so the gradient it gets
    is rounding noise, which Adam divides by its own root mean square into updates of up to the
    learning rate. Another summation order (other ranks, other micro-steps) gives other noise.
    embedding_atol: the bound for the tied wte/lm_head matrix (see the FSDP test)."""
    for k, v in expected.items():
        g = got[k]
        if k in ("transformer.wte.weight", "lm_head.weight"):
            torch.testing.assert_close(g, v, rtol=0, atol=embedding_atol, msg=k)
            continue
        if k.endswith("attn.c_attn.bias"):
            C = v.numel() // 3
            torch.testing.assert_close(g[C : 2 * C], v[C : 2 * C], rtol=0, atol=1e-4, msg=k)
            g, v = torch.cat([g[:C], g[2 * C :]]), torch.cat([v[:C], v[2 * C :]])
        torch.testing.assert_close(g, v, rtol=0, atol=1e-5, msg=k)


def test_resume_on_another_number_of_processes(data_dir, tmp_path):
    """A run stopped at step 3 on 2 ranks continues on 1 process, and one stopped on 1 process
    continues on 2 ranks, with the same losses and weights as the straight run (up to DDP's
    rounding). The 2-rank legs run 2 micro-steps per rank, so DDP's no_sync path is exercised too."""
    flags = ["--data_dir", data_dir, *TINY, "--batch_size", "2", "--total_batch_size", "128", "--max_steps", "6",
             "--eval_every", "100", "--save_every", "100"]
    straight = run(data_dir, tmp_path / "straight", *flags[2:])
    # 2 ranks, then 1 process
    proc = torchrun(2, *flags, "--stop_at_step", "3", "--log_dir", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = run(data_dir, tmp_path / "a", *flags[2:], "--resume")
    got = train_losses(tmp_path / "a")
    print("2 -> 1 process, largest loss difference:", max(abs(a - b) for a, b in zip(got, straight["losses"])))
    torch.testing.assert_close(torch.tensor(got), torch.tensor(straight["losses"]), rtol=0, atol=1e-5)
    assert_weights_close(resumed["model"].state_dict(), straight["model"].state_dict())
    # 1 process, then 2 ranks
    run(data_dir, tmp_path / "b", *flags[2:], "--stop_at_step", "3")
    proc = torchrun(2, *flags, "--resume", "--log_dir", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = train_losses(tmp_path / "b")
    print("1 -> 2 processes, largest loss difference:", max(abs(a - b) for a, b in zip(got, straight["losses"])))
    torch.testing.assert_close(torch.tensor(got), torch.tensor(straight["losses"]), rtol=0, atol=1e-5)
    final = torch.load(tmp_path / "b" / "model_00006.pt", weights_only=True)["model"]
    assert_weights_close(final, straight["model"].state_dict())


def test_overwrite_deletes_the_previous_run(data_dir, tmp_path, capsys):
    flags = ["--total_batch_size", "64", "--eval_every", "100"]
    run(data_dir, tmp_path, *flags, "--max_steps", "4", "--save_every", "2")
    assert checkpoint.list_checkpoints(str(tmp_path))[-1].endswith("model_00004.pt")
    # refused without --overwrite, and nothing is touched
    with pytest.raises(SystemExit):
        run(data_dir, tmp_path, *flags, "--max_steps", "2")
    assert "--overwrite" in capsys.readouterr().err and len(checkpoint.list_checkpoints(str(tmp_path))) == 2
    # with it, the old run's checkpoints and log are gone: --resume then continues the new run
    run(data_dir, tmp_path, *flags, "--max_steps", "2", "--overwrite")
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(str(tmp_path))] == ["model_00002.pt"]
    assert [e["step"] for e in read_log(tmp_path) if "train_loss" in e] == [0, 1]


def fake_step_data(B, T, n, vocab=50257, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, B, T + 1), generator=g)


class ListLoader:
    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next_batch(self):
        b = self.batches[self.i]
        self.i += 1
        return b[:, :-1], b[:, 1:]


def tiny_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=50257, n_layer=1, n_head=2, n_embd=16))


def test_accumulated_gradient_equals_one_backward_over_the_batch():
    """4 micro-steps of 2 sequences (clipping off) give the gradient of one backward over the 8."""
    data = fake_step_data(2, 16, 4)
    model = tiny_model()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = train_gpt2.forward_backward(model, ListLoader(data), 4, contextlib.nullcontext(), scaler, ONE_CPU)
    accumulated = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    whole = data.reshape(8, 17)
    ref_loss = model(whole[:, :-1], whole[:, 1:])[1]
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=0, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(accumulated[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)


def test_clipping_returns_the_norm_before_and_clips_to_the_limit():
    data = fake_step_data(2, 16, 1)
    model = tiny_model()
    opt = model.configure_optimizers(0.1, 1e-3, "cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    # lr 0: the step leaves the weights as they are, so the second backward gives the same gradient
    train_gpt2.forward_backward(model, ListLoader(data), 1, contextlib.nullcontext(), scaler, ONE_CPU)
    norm, _ = train_gpt2.optimizer_step(opt, scaler, 0.0, 0.0)
    unclipped = norm.item()
    train_gpt2.forward_backward(model, ListLoader(data), 1, contextlib.nullcontext(), scaler, ONE_CPU)
    norm, _ = train_gpt2.optimizer_step(opt, scaler, 0.0, 0.01)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
    assert norm.item() == pytest.approx(unclipped, rel=1e-6) and unclipped > 0.01
    assert after == pytest.approx(0.01, rel=1e-4)


@pytest.mark.parametrize("flags, message", [
    (["--n_layer", "3"], "--n_layer 2, this command says --n_layer 3"),
    (["--total_batch_size", "128"], "--total_batch_size 64, this command says --total_batch_size 128"),
    (["--max_lr", "2e-2"], "--max_lr 0.01, this command says --max_lr 0.02"),
])
def test_resume_refuses_flags_that_define_the_run(data_dir, tmp_path, capsys, flags, message):
    base = ["--total_batch_size", "64", "--eval_every", "100", "--max_steps", "4"]
    run(data_dir, tmp_path, *base, "--stop_at_step", "2")
    before = (tmp_path / "model_00002.pt").read_bytes(), (tmp_path / "log.jsonl").read_bytes()
    with pytest.raises(SystemExit) as e:
        run(data_dir, tmp_path, *base, *flags, "--resume")
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err
    assert before == ((tmp_path / "model_00002.pt").read_bytes(), (tmp_path / "log.jsonl").read_bytes())


def test_resume_allows_and_reports_max_steps_and_cadences(data_dir, tmp_path, capsys):
    base = ["--total_batch_size", "64", "--eval_every", "100", "--max_steps", "4"]
    run(data_dir, tmp_path, *base, "--stop_at_step", "2")
    run(data_dir, tmp_path, "--total_batch_size", "64", "--eval_every", "3", "--max_steps", "5", "--resume")
    out = capsys.readouterr().out
    assert "--max_steps 4 -> 5" in out and "--eval_every 100 -> 3" in out
    assert [e["step"] for e in read_log(tmp_path) if "train_loss" in e] == [0, 1, 2, 3, 4]


def test_resume_into_another_runs_log_dir_is_refused(data_dir, tmp_path, capsys):
    base = ["--total_batch_size", "64", "--eval_every", "100", "--max_steps", "4"]
    run(data_dir, tmp_path / "a", *base, "--stop_at_step", "2")
    run(data_dir, tmp_path / "b", *base, "--stop_at_step", "2")
    before = (tmp_path / "b" / "model_00002.pt").read_bytes()
    with pytest.raises(SystemExit):
        run(data_dir, tmp_path / "b", *base, "--resume", str(tmp_path / "a" / "model_00002.pt"))
    assert "holds checkpoints of another run" in capsys.readouterr().err
    assert (tmp_path / "b" / "model_00002.pt").read_bytes() == before


def test_corrupt_checkpoint_names_itself_and_the_one_before(data_dir, tmp_path, capsys):
    run(data_dir, tmp_path, "--total_batch_size", "64", "--eval_every", "100", "--max_steps", "4", "--save_every", "2")
    path = tmp_path / "model_00004.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a full disk
    with pytest.raises(SystemExit):
        run(data_dir, tmp_path, "--total_batch_size", "64", "--max_steps", "6", "--resume")
    err = capsys.readouterr().err
    assert f"checkpoint {path} cannot be read" in err and f"--resume {tmp_path / 'model_00002.pt'}" in err
    assert "weights_only" not in err and "Traceback" not in err and err.count("\n") == 1


def test_float16_skips_overflowing_steps_and_resumes_exactly(data_dir, tmp_path, monkeypatch):
    """--dtype float16 with loss scaling: a step whose gradients overflow is skipped (the weights do
    not change) and logged; the scaler's state is in the checkpoint and resume is exact."""
    flags = ["--total_batch_size", "64", "--max_steps", "6", "--eval_every", "100", "--dtype", "float16", "--max_lr", "1e-3"]
    straight = run(data_dir, tmp_path / "straight", *flags)
    assert all(math.isfinite(x) for x in straight["losses"])
    run(data_dir, tmp_path / "split", *flags, "--stop_at_step", "3")
    assert torch.load(tmp_path / "split" / "model_00003.pt", weights_only=True)["scaler"]["scale"] > 0
    second = run(data_dir, tmp_path / "split", *flags, "--resume")
    assert train_losses(tmp_path / "split") == straight["losses"]
    for k, v in straight["model"].state_dict().items():
        torch.testing.assert_close(second["model"].state_dict()[k], v, rtol=0, atol=0, msg=k)

    # an overflow at step 2: its gradients are infinite while its loss is finite, as float16 gives
    # when the loss scale is too high. The step is skipped: the weights equal a run that stops at 2
    real_forward = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] == 3:  # step 2 (one micro-step per step)
                logits.register_hook(lambda g: g * float("inf"))
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    overflow = run(data_dir, tmp_path / "overflow", *flags, "--max_steps", "3")
    log = [e for e in read_log(tmp_path / "overflow") if "train_loss" in e]
    assert [e.get("skipped", False) for e in log] == [False, False, True]
    assert log[2]["loss_scale"] == log[1].get("loss_scale", 65536.0) / 2
    monkeypatch.setattr(GPT, "forward", real_forward)
    two = run(data_dir, tmp_path / "two", *flags, "--max_steps", "3", "--stop_at_step", "2")
    for k, v in two["model"].state_dict().items():
        torch.testing.assert_close(overflow["model"].state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_fsdp_matches_ddp_and_one_process_and_resumes(data_dir, tmp_path):
    """--fsdp with 2 ranks against DDP with 2 ranks and against 1 process with accumulation,
    float32, 10 steps of 2 micro-steps per rank (so FSDP's skipped gradient sync is exercised):
    the same losses and final weights. A sharded checkpoint stopped at step 5 resumes exactly on 2
    ranks, and within DDP's rounding in 1 plain process; --consolidate turns it into the single
    file that hellaswag.py and save_pretrained read."""
    hs = str(tmp_path / "hellaswag_val.jsonl")
    write_hellaswag(hs, 7)  # 4 examples for rank 0, 3 for rank 1: uneven forwards, on the gathered model
    flags = ["--data_dir", data_dir, *TINY, "--batch_size", "2", "--total_batch_size", "128", "--max_steps", "10",
             "--eval_every", "5", "--save_every", "100", "--num_samples", "1", "--sample_len", "4",
             "--hellaswag", "--hellaswag_file", hs]
    single = run(data_dir, tmp_path / "single", *flags[2:])
    for name, extra in [("fsdp", ["--fsdp"]), ("ddp", []), ("split", ["--fsdp", "--stop_at_step", "5"])]:
        proc = torchrun(2, *flags, *extra, "--log_dir", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = torchrun(2, *flags, "--fsdp", "--resume", "--log_dir", str(tmp_path / "split"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    fsdp, ddp, split = (train_losses(tmp_path / n) for n in ("fsdp", "ddp", "split"))
    print("FSDP vs 1 process, largest loss difference:", max(abs(a - b) for a, b in zip(fsdp, single["losses"])))
    print("FSDP vs DDP, largest loss difference:", max(abs(a - b) for a, b in zip(fsdp, ddp)))
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(single["losses"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(ddp), rtol=0, atol=1e-5)
    assert split == fsdp  # stopped and resumed: exactly the straight run
    # HellaSwag: rank 0 read the file and sent the examples; both ranks scored their share
    evals = [e for e in read_log(tmp_path / "fsdp") if "val_loss" in e]
    assert [e["hellaswag_n"] for e in evals] == [7, 7, 7] and all(len(e["samples"]) == 1 for e in evals)
    ref = [e for e in read_log(tmp_path / "single") if "val_loss" in e]
    assert [e["hellaswag_acc_norm"] for e in evals] == [e["hellaswag_acc_norm"] for e in ref]
    # the sharded checkpoint, consolidated into one file, against the other runs' weights
    assert train_gpt2.main(["--consolidate", str(tmp_path / "fsdp" / "model_00010")]) is None
    consolidated = torch.load(tmp_path / "fsdp" / "model_00010.pt", weights_only=True)
    # measured: FSDP's weights are within 2e-6 of DDP's and one process's but for two elements of the
    # 1.6M of the tied embedding (3e-5; DDP's are within 1.5e-6): bound them at 1e-4. The cause is the
    # clipping: FSDP sums the shards' squared norms in another order, so the clip factor differs in
    # its last bit, and Adam magnifies that where gradients are tiny (with clipping off, FSDP's and
    # DDP's gradients and weights were bitwise equal over 10 steps)
    assert_weights_close(consolidated["model"], single["model"].state_dict(), embedding_atol=1e-4)
    assert_weights_close(consolidated["model"], torch.load(tmp_path / "ddp" / "model_00010.pt", weights_only=True)["model"],
                         embedding_atol=1e-4)
    # a 2-rank sharded checkpoint resumed in 1 plain process
    resumed = run(data_dir, tmp_path / "one", *flags[2:], "--resume", str(tmp_path / "split" / "model_00005"))
    torch.testing.assert_close(torch.tensor(train_losses(tmp_path / "one")), torch.tensor(single["losses"][5:]), rtol=0, atol=1e-5)
    assert_weights_close(resumed["model"].state_dict(), single["model"].state_dict(), embedding_atol=1e-4)
    # the consolidated file in hellaswag.py and through Hugging Face
    import hellaswag
    from transformers import GPT2LMHeadModel

    ev = hellaswag.load_for_eval(str(tmp_path / "fsdp" / "model_00010.pt"), "cpu")
    gpt = GPT(GPTConfig(**consolidated["config"]))
    gpt.load_state_dict(consolidated["model"])
    gpt.save_pretrained(str(tmp_path / "hf"))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        ours = ev.logits_fn(idx)[..., :50257]
        torch.testing.assert_close(hf(idx).logits, ours, rtol=0, atol=1e-4)
