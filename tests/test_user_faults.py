"""What a user can meet that is not a bug of ours, round two: a log line cut by kill -9, two runs
in one --log_dir, contradictory or abbreviated flags, OS errors while writing, an empty prompt,
short shards, a data folder that is a file. Each ends in one line and exit status 2 (or does what
the user expects), with every earlier file intact. Also: the progress line and closing summary,
validation over the same tokens at 1 and 2 processes, and --help before torch is imported."""

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch

import checkpoint
import common
import runlog
import sample
import train_gpt2
from model import GPT, GPTConfig, generate
from shards import write_manifest, write_shard
from test_train import ROOT, TINY, data_dir, read_log, run, torchrun  # noqa: F401 (data_dir: the fixture)
from tokenizer import GPT2_EOT, get_tokenizer


def refused(capsys, fn, *args, prog="train_gpt2.py"):
    """The one line that fn(*args) ends with (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as e:
        fn(*args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def snapshot(folder):
    """Every file under folder with its bytes."""
    return {os.path.relpath(os.path.join(r, n), folder): open(os.path.join(r, n), "rb").read()
            for r, _, names in os.walk(folder) for n in names}


FLAGS = ["--total_batch_size", "64", "--eval_every", "2", "--save_every", "2"]


# -----------------------------------------------------------------------------
# resume after a cut log line


def test_resume_drops_a_log_line_cut_by_kill(data_dir, tmp_path, capsys):
    """kill -9 while log.jsonl's last line was being written: --resume drops the partial line, says
    so, and continues the run as if it had stopped at its checkpoint."""
    run(data_dir, tmp_path, *FLAGS, "--max_steps", "4", "--stop_at_step", "2")
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 2, "train_loss": 10.4, "lr"')  # no closing brace, no newline
    capsys.readouterr()
    run(data_dir, tmp_path, *FLAGS, "--max_steps", "4", "--resume")
    assert "its last line was cut short" in capsys.readouterr().out
    log = read_log(tmp_path)
    assert [e["step"] for e in log if "train_loss" in e] == [0, 1, 2, 3]
    assert [e["step"] for e in log if "val_loss" in e] == [0, 2, 4]


def test_kill_9_mid_run_then_resume_is_bit_exact(data_dir, tmp_path):
    """A training process killed with SIGKILL wherever it is (mid-step, mid-checkpoint, mid-log
    line), then --resume: the same losses, val losses, weights and AdamW state as a run never
    stopped."""
    flags = [*FLAGS, "--max_steps", "100000", "--val_steps", "4"]  # the same schedule for both runs; they stop early
    p = subprocess.Popen([sys.executable, "train_gpt2.py", "--data_dir", data_dir, "--log_dir", str(tmp_path / "run"),
                          *TINY, *flags], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):  # until its second checkpoint, then a little further
            if len(checkpoint.list_checkpoints(str(tmp_path / "run"))) >= 2 or p.poll() is not None:
                break
            time.sleep(0.1)
        time.sleep(0.05)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    latest = checkpoint.latest_checkpoint(str(tmp_path / "run"))
    stop = int(re.search(r"model_(\d+)", latest)[1]) + 3
    resumed = run(data_dir, tmp_path / "run", *flags, "--resume", "--stop_at_step", str(stop))
    straight = run(data_dir, tmp_path / "ref", *flags, "--stop_at_step", str(stop))
    events = lambda d, key: [(e["step"], e[key]) for e in read_log(d) if key in e]  # noqa: E731
    for key in ("train_loss", "val_loss"):
        assert events(tmp_path / "run", key) == events(tmp_path / "ref", key), key
    assert [s for s, _ in events(tmp_path / "run", "train_loss")] == list(range(stop))
    a, b = (torch.load(d / f"model_{stop:05d}.pt", weights_only=True) for d in (tmp_path / "run", tmp_path / "ref"))
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k
    for i, state in b["optimizer"]["state"].items():
        assert all(torch.equal(a["optimizer"]["state"][i][k], v) for k, v in state.items()), i
    assert resumed["losses"] == straight["losses"][-3:]


def test_a_log_line_bad_in_the_middle_is_named(data_dir, tmp_path, capsys):
    run(data_dir, tmp_path, *FLAGS, "--max_steps", "4", "--stop_at_step", "2")
    lines = (tmp_path / "log.jsonl").read_text().split("\n")
    (tmp_path / "log.jsonl").write_text("\n".join(lines[:1] + ["garbage"] + lines[1:]))
    before = snapshot(tmp_path)
    err = refused(capsys, run, data_dir, tmp_path, *FLAGS, "--max_steps", "4", "--resume")
    assert "log.jsonl line 2 is not JSON" in err
    assert snapshot(tmp_path) == before


# -----------------------------------------------------------------------------
# concurrency: one run per --log_dir


def hold_lock(log_dir):
    """Another process holding log_dir's lock, as a running train_gpt2.py does."""
    code = f"import runlog, time; runlog.LogDirLock({str(log_dir)!r}); print('held', flush=True); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_in_a_log_dir_is_refused_and_a_dead_ones_lock_taken_over(data_dir, tmp_path, capsys):
    run(data_dir, tmp_path, *FLAGS, "--max_steps", "2")
    holder = hold_lock(tmp_path)
    try:
        before = snapshot(tmp_path)
        err = refused(capsys, run, data_dir, tmp_path, *FLAGS, "--max_steps", "4", "--resume")
        assert f"--log_dir {tmp_path} is in use by another run (pid {holder.pid} on " in err
        refused(capsys, run, data_dir, tmp_path, *FLAGS, "--max_steps", "2", "--overwrite")
        assert snapshot(tmp_path) == before  # the running one's files untouched
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: its run.lock stays, unlocked
        holder.wait()
    assert os.path.exists(tmp_path / runlog.LOCK)
    (tmp_path / "model_00003.pt.tmp").write_bytes(b"half a checkpoint")  # what a kill mid-save leaves
    run(data_dir, tmp_path, *FLAGS, "--max_steps", "4", "--resume")
    out = capsys.readouterr().out
    assert f"(pid {holder.pid} on " in out and "ended without releasing it" in out
    assert "removed what a killed run left half-written: model_00003.pt.tmp" in out
    assert sorted(os.listdir(tmp_path)) == ["log.jsonl", "loss.png", "model_00002.pt", "model_00004.pt"]


def test_lock_is_released_and_a_refused_run_leaves_no_folder(data_dir, tmp_path, capsys):
    lock = runlog.LogDirLock(str(tmp_path / "a"))
    with pytest.raises(common.UserError, match="is in use by another run"):
        runlog.LogDirLock(str(tmp_path / "a"))  # another open file: flock refuses it even in one process
    lock.release()
    assert not os.path.exists(tmp_path / "a")  # made by the lock, left empty: gone
    runlog.LogDirLock(str(tmp_path / "a")).release()
    # a run refused at start-up (no data) does not leave its --log_dir behind
    refused(capsys, run, str(tmp_path / "nowhere"), tmp_path / "log", *FLAGS, "--max_steps", "2")
    assert not os.path.exists(tmp_path / "log")


# -----------------------------------------------------------------------------
# bad invocations


@pytest.mark.parametrize("flags, message", [
    (["--resume", "--overwrite"], "--resume continues the run in --log_dir and --overwrite deletes it"),
    (["--max_step", "5"], "unrecognized arguments: --max_step 5"),
])
def test_contradictory_or_abbreviated_flags(data_dir, tmp_path, capsys, flags, message):
    run(data_dir, tmp_path, *FLAGS, "--max_steps", "2")
    before = snapshot(tmp_path)
    assert message in refused(capsys, run, data_dir, tmp_path, *FLAGS, "--max_steps", "2", *flags)
    assert snapshot(tmp_path) == before


# -----------------------------------------------------------------------------
# filesystem faults


def test_log_dir_that_is_a_file_or_under_one(data_dir, tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    err = refused(capsys, run, data_dir, tmp_path / "f", *FLAGS, "--max_steps", "2")
    assert f"--log_dir {tmp_path / 'f'} is a file, not a folder" in err
    err = refused(capsys, run, data_dir, tmp_path / "f" / "log", *FLAGS, "--max_steps", "2")
    assert f"{tmp_path / 'f'} is a file, not a folder" in err
    assert (tmp_path / "f").read_text() == "mine"


def test_disk_full_during_a_checkpoint(data_dir, tmp_path, capsys, monkeypatch):
    """The disk fills while model_00004.pt is written: one line naming it, model_00002.pt intact,
    no .tmp left."""
    real_save = torch.save

    class Full:  # the disk fills after the file's first few writes
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, b):
            self.writes += 1
            if self.writes > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def save(obj, f, *a, **k):  # torch reports it as a RuntimeError raised while handling the OSError
        return real_save(obj, Full(f) if obj["step"] == 4 else f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    err = refused(capsys, run, data_dir, tmp_path, *FLAGS, "--max_steps", "4")
    assert f"cannot write {tmp_path / 'model_00004.pt'}: the disk is full" in err and "(ENOSPC)" in err
    assert sorted(os.listdir(tmp_path)) == ["log.jsonl", "loss.png", "model_00002.pt"]
    assert torch.load(tmp_path / "model_00002.pt", weights_only=True)["step"] == 2


def test_write_atomic_turns_os_errors_into_one_line(tmp_path, monkeypatch):
    (tmp_path / "out").write_bytes(b"old")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    with pytest.raises(common.UserError, match=r"cannot write .*out: the file system is read-only.*\(EROFS\)"):
        common.write_atomic(str(tmp_path / "out"), b"new")
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out").read_bytes() == b"old"
    monkeypatch.undo()
    with pytest.raises(common.UserError, match=r"cannot write .*out: it is a file, not a folder.*\(EEXIST\)"):
        common.write_atomic(str(tmp_path / "out" / "x"), b"new")
    with pytest.raises(ValueError):  # anything else is a bug of ours and stays itself
        common.write_atomic(str(tmp_path / "y"), lambda f: int("x"))


def test_hellaswag_out_under_a_file(tmp_path, capsys):
    import hellaswag

    (tmp_path / "f").write_text("mine")
    (tmp_path / "m.pt").write_bytes(b"")
    (tmp_path / "hs.jsonl").write_text("")
    err = refused(capsys, hellaswag.main, ["--model", str(tmp_path / "m.pt"), "--file", str(tmp_path / "hs.jsonl"),
                                           "--device", "cpu", "--out", str(tmp_path / "f" / "r.json")], prog="hellaswag.py")
    assert f"--out {tmp_path / 'f' / 'r.json'}: {tmp_path / 'f'} is a file, not a folder" in err


# -----------------------------------------------------------------------------
# sampling from an empty prompt


def test_empty_prompt_samples_from_endoftext(tmp_path, capsys):
    """As OpenAI's GPT-2 samples unconditionally: the continuation of <|endoftext|>, without it."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=50304, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config).eval()
    got = sample.sample_text(model, "", 2, 5, "cpu", seed=3)
    idx = torch.full((2, 1), GPT2_EOT)
    ref = generate(model, idx, 5, top_k=50, generator=torch.Generator().manual_seed(3))
    assert got == [get_tokenizer().decode(row[1:].tolist()) for row in ref]
    checkpoint.save_checkpoint(str(tmp_path / "m.pt"), {"model": model.state_dict(), "config": asdict(config)})
    sample.main(["--model", str(tmp_path / "m.pt"), "--prompt", "", "--num_samples", "2", "--max_new_tokens", "5",
                 "--device", "cpu", "--seed", "3"])
    assert capsys.readouterr().out == "".join(f"> {t}\n" for t in got)


# -----------------------------------------------------------------------------
# data: short shards, a folder that is a file


def test_short_shards_are_skipped_and_refused_only_when_none_holds_a_step(data_dir, tmp_path, capsys):
    d = tmp_path / "data"
    shutil.copytree(data_dir, d)
    write_shard(str(d / "test_train_000004.bin"), np.arange(100))  # fineweb.py's short last shard
    write_manifest(str(d))
    out = run(str(d), tmp_path / "log", "--total_batch_size", "128", "--max_steps", "9", "--eval_every", "100")
    assert "skipping 1 train shard(s) shorter than one step of 128 + 1 tokens: test_train_000004.bin (100 tokens)" \
        in capsys.readouterr().out
    # 9 steps of 128 tokens visit the three long shards (1500, 700, 1100: 11, 5 and 8 steps) and no other
    assert len(out["losses"]) == 9
    err = refused(capsys, run, str(d), tmp_path / "log2", "--total_batch_size", "2048", "--max_steps", "2",
                  "--batch_size", "4", "--seq_len", "16")
    assert f"--data_dir {d}: no train shard holds the 2048 + 1 tokens that one step reads (the largest has 1500)" in err


def test_missing_or_too_small_data_is_said_before_the_model_is_built(data_dir, tmp_path, capsys, monkeypatch):
    """--preset gpt2-1558m on a machine without its data, or with data too small for its 1M-token
    step: the error comes at once, not after the minutes that building 1.5B parameters takes on a CPU."""
    monkeypatch.setattr(train_gpt2, "build_model", lambda *a: pytest.fail("the model was built before the data check"))
    big = ["--preset", "gpt2-1558m", "--device", "cpu", "--log_dir", str(tmp_path / "log")]
    err = refused(capsys, train_gpt2.main, [*big, "--data_dir", str(tmp_path / "none")])
    assert f"--data_dir {tmp_path / 'none'} does not exist" in err
    err = refused(capsys, train_gpt2.main, [*big, "--data_dir", data_dir])
    assert f"--data_dir {data_dir}: no train shard holds the 1048576 + 1 tokens that one step reads" in err


def test_a_slow_validation_says_how_long_it_will_take(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_gpt2, "SLOW_VALIDATION_S", 0.0)  # every validation is slow for this test
    run(data_dir, tmp_path, *FLAGS, "--max_steps", "2", "--val_steps", "3")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("validation:")]
    assert len(lines) == 2 and re.fullmatch(r"validation: 3 batches, about \S+", lines[0]), lines


def test_data_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "data").write_text("")
    err = refused(capsys, run, str(tmp_path / "data"), tmp_path / "log", *FLAGS, "--max_steps", "2")
    assert f"--data_dir {tmp_path / 'data'} is a file, not a folder" in err


# -----------------------------------------------------------------------------
# what a person sees: progress and the closing summary


def test_progress_line_and_closing_summary(data_dir, tmp_path, capsys):
    run(data_dir, tmp_path, *FLAGS, "--max_steps", "4")
    out = capsys.readouterr().out
    assert "training steps 0-4 (256 tokens), evaluating first; a line follows each step" in out
    steps = [line for line in out.splitlines() if line.startswith("step ") and "| loss" in line]
    assert len(steps) == 4
    for i, line in enumerate(steps):
        assert re.search(rf"\| {i + 1}/4 steps, {64 * (i + 1)} tokens \| ETA \d", line), line
    last = out.strip().splitlines()[-1]
    val = [e for e in read_log(tmp_path) if "val_loss" in e][-1]
    assert re.fullmatch(rf"done: steps 0-4 in \S+, 256 tokens seen \| val loss {val['val_loss']:.4f} at step 4 \| "
                        rf"last checkpoint {re.escape(str(tmp_path / 'model_00004.pt'))}", last), last


def test_mfu_stays_at_most_100_percent_when_the_cpu_peak_was_timed_busy(data_dir, tmp_path, capsys, monkeypatch):
    """A CPU's peak is a measurement: taken while the machine was busy, a later step beats it.
    The peak is then measured again and never left below what a step achieved."""
    monkeypatch.setattr(train_gpt2, "run_peak_flops", lambda d, dtype: 1e6)  # 1 MFLOP/s: timed on a crowded machine
    run(data_dir, tmp_path, *FLAGS, "--max_steps", "3")
    mfus = [e["mfu"] for e in read_log(tmp_path) if "mfu" in e]
    assert len(mfus) == 3 and all(0 < m <= 1 for m in mfus), mfus
    assert "above the peak measured earlier (0.0, timed on a busier machine); measured again" in capsys.readouterr().out


def test_counts_and_durations_read_as_a_person_reads_them():
    assert [runlog.human(n) for n in (64, 524288, 10**10)] == ["64", "524.3K", "10.0B"]
    assert [runlog.duration(s) for s in (0, 0.5, 45, 725, 11220, 3542400)] == ["0s", "0.5s", "45s", "12m05s", "3h07m", "41d00h"]
    # the ETA is the time per step times the steps left
    assert runlog.progress(9, 20, 1000, 2.0).endswith("10/20 steps, 10.0K tokens | ETA 20s")


# -----------------------------------------------------------------------------
# validation over the same tokens at any number of processes


@pytest.mark.parametrize("parallel", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_val_loss_is_the_same_at_1_and_2_processes(data_dir, tmp_path, parallel):
    """val_steps batches in all, split across the ranks: 3 batches (uneven over 2 ranks) give the
    val loss of one process. Under FSDP the uneven forwards run on the gathered model, and an
    evaluation at every step leaves the training exact (evaluating on the sharded model left the
    last block and the root unsharded from a no-grad forward, and the next updates drifted)."""
    flags = ["--data_dir", data_dir, *TINY, "--batch_size", "2", "--total_batch_size", "64", "--max_steps", "3",
             "--eval_every", "1", "--val_steps", "3", "--save_every", "100"]
    proc = torchrun(2, *flags, *parallel, "--log_dir", str(tmp_path / "ddp"), timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run(data_dir, tmp_path / "single", *flags[2:])
    log = read_log(tmp_path / "ddp")
    val = [e["val_loss"] for e in log if "val_loss" in e]
    single_val = [e["val_loss"] for e in read_log(tmp_path / "single") if "val_loss" in e]
    print("val losses, 2 processes:", val, "1 process:", single_val)
    assert len(val) == 4
    torch.testing.assert_close(torch.tensor(val), torch.tensor(single_val), rtol=0, atol=1e-5)
    losses = [e["train_loss"] for e in log if "train_loss" in e]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(single["losses"]), rtol=0, atol=1e-5)


# -----------------------------------------------------------------------------
# --help before torch


@pytest.mark.parametrize("script", ["train_gpt2.py", "sample.py"])
def test_help_is_printed_before_torch_is_imported(script):
    code = (f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
            f"try:\n    runpy.run_path({script!r}, run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
            f"print('exit', code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith(f"usage: {script}") and "--seed" in proc.stdout, proc.stderr
    assert proc.stdout.strip().endswith("exit 0 False")
