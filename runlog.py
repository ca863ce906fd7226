"""
What a run leaves for a person to read: log.jsonl (one JSON object per event, rank 0 only) and
loss.png drawn from it; and the lock that keeps one run at a time in a --log_dir.
"""

import contextlib
import fcntl
import glob
import json
import os
import shutil
import socket
import sys
import time

from common import UserError, make_dirs, write_atomic, write_error

LOCK = "run.lock"


class LogDirLock:
    """One run at a time in log_dir (made if need be): log_dir/run.lock, flock'ed for the run's
    life and naming its holder (pid, host, start, command). A second run is refused in one line
    naming the first; the kernel drops the lock of a process that dies however it dies (kill -9
    included), so a stale run.lock is taken over, and what its run left half-written (.tmp files
    of checkpoints, log.jsonl, loss.png) is removed. release() unlocks and deletes run.lock (and
    log_dir, if this lock made it and nothing else was written there)."""

    def __init__(self, log_dir):
        self.log_dir, self.path = log_dir, os.path.join(log_dir, LOCK)
        self.made = not os.path.isdir(log_dir)
        make_dirs(log_dir)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise write_error(self.path, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace").strip() or "no details"
                os.close(fd)
                self.remove_made_dir()
                raise UserError(f"--log_dir {log_dir} is in use by another run ({holder}); wait for it to end, stop "
                                f"it, or choose another --log_dir") from None
            # the lock holds only if run.lock is still the file we locked: a run releasing it
            # deletes it between our open and our flock
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        leftovers = [p for p in glob.glob(os.path.join(log_dir, "*.tmp")) if os.path.basename(p).startswith(("model_", "log.jsonl", "loss.png"))]
        if previous:
            print(f"--log_dir {log_dir}: the run that held it ({previous}) ended without releasing it (killed?)")
        if leftovers:
            print(f"--log_dir {log_dir}: removed what a killed run left half-written: "
                  + ", ".join(sorted(map(os.path.basename, leftovers))))
        for path in leftovers:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                      f"{' '.join(sys.argv)}".encode(), 0)

    def remove_made_dir(self):
        if self.made:
            with contextlib.suppress(OSError):
                os.rmdir(self.log_dir)  # only if empty

    def release(self):
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)  # before unlocking, so that no run locks a file about to go
        os.close(self.fd)
        self.remove_made_dir()


class Logger:
    """log.jsonl in log_dir, one object per event; written by rank 0 only."""

    def __init__(self, log_dir, resume_step=None):
        self.path = os.path.join(log_dir, "log.jsonl")
        if resume_step is None:
            write_atomic(self.path, b"")
        elif os.path.exists(self.path):
            # drop what the interrupted run logged after its checkpoint: the resumed run logs
            # those steps again
            events = read_log(self.path, cut_ok=True)
            keep = [e for e in events if e["step"] < resume_step or (e["step"] == resume_step and "train_loss" not in e)]
            write_atomic(self.path, "".join(json.dumps(e) + "\n" for e in keep).encode())

    def log(self, **event):
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(event) + "\n")
        except OSError as e:
            raise write_error(self.path, e) from None

    def log_evaluation(self, event, args):
        """An evaluation's line and samples printed, its event logged, loss.png redrawn."""
        msg = f"step {event['step']:5d} | val loss {event['val_loss']:.4f}"
        if "hellaswag_n" in event:
            n, correct_norm = event["hellaswag_n"], round(event["hellaswag_acc_norm"] * event["hellaswag_n"])
            msg += f" | HellaSwag acc_norm {correct_norm}/{n} = {event['hellaswag_acc_norm']:.4f}"
        print(msg)
        for text in event.get("samples", []):
            # as text, as a person reads it; a sample's own line breaks stay, indented under it
            print("sample: " + text.replace("\n", "\n        "))
        self.log(**event)
        baselines = "fineweb" in os.path.abspath(args.data_dir).lower()  # OpenAI's 124M figures for comparison
        plot_log(self.path, os.path.join(args.log_dir, "loss.png"), baselines)


def read_log(path, cut_ok=False):
    """The events of log.jsonl. cut_ok: a last line cut short (a kill -9 while it was written) is
    dropped, with a note; any other line that is not JSON is a UserError naming the line."""
    with open(path) as f:
        lines = f.read().split("\n")
    events = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            if cut_ok and not any(rest.strip() for rest in lines[i + 1 :]):
                print(f"{path}: its last line was cut short (the run was killed while writing it), dropped: {line[:60]!r}")
                continue
            raise UserError(f"{path} line {i + 1} is not JSON ({line[:60]!r}): not a log that train_gpt2.py "
                            f"wrote; move it away to resume") from None
    return events


def plot_log(log_path, png_path, baselines):
    """Train/val loss and HellaSwag acc_norm from log.jsonl into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    events = read_log(log_path)
    train = [(e["step"], e["train_loss"]) for e in events if "train_loss" in e]
    val = [(e["step"], e["val_loss"]) for e in events if "val_loss" in e]
    hella = [(e["step"], e["hellaswag_acc_norm"]) for e in events if "hellaswag_acc_norm" in e]
    # the HellaSwag panel only when there is something to draw in it (not with --no-hellaswag)
    two = bool(hella or baselines)
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(14 if two else 7, 5), squeeze=False)
    ax1, ax2 = axes[0, 0], axes[0, -1]
    if train:
        ax1.plot(*zip(*train), label="train loss", lw=0.8)
    if val:
        ax1.plot(*zip(*val), label="val loss", marker="o", ms=3)
    if hella:
        ax2.plot(*zip(*hella), label="ours", marker="o", ms=3)
    panels = [(ax1, "loss", "loss", 3.2924)] + ([(ax2, "HellaSwag", "acc_norm", 0.2955)] if two else [])
    for ax, title, ylabel, openai in panels:
        if baselines:  # OpenAI's GPT-2 124M: its FineWeb val loss and HellaSwag acc_norm
            ax.axhline(openai, color="r", ls="--", label="OpenAI GPT-2 (124M)" + (" val loss" if ax is ax1 else ""))
        ax.set(xlabel="step", ylabel=ylabel, title=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    write_atomic(png_path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)


def human(n):
    """A count as a person reads it: 524288 -> 524.3K, 10**10 -> 10.0B."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def duration(seconds):
    """Seconds as 0.5s, 45s, 12m05s, 3h07m or 41d05h."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 10 or seconds == 0 else f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def progress(step, end_step, step_tokens, seconds_per_step):
    """Where a run stands after step (0-based): steps and tokens done, and the time to end_step at
    seconds_per_step (the mean over the run so far, evaluations and checkpoints included)."""
    done = step + 1
    return (f"{done}/{end_step} steps, {human(done * step_tokens)} tokens | "
            f"ETA {duration(seconds_per_step * (end_step - done))}")


def summary(start_step, end_step, step_tokens, seconds, last_eval, val_loss, last_checkpoint):
    """The run's closing line: what it did and where its results are."""
    text = f"done: steps {start_step}-{end_step} in {duration(seconds)}, {human(end_step * step_tokens)} tokens seen"
    if last_eval is not None:
        text += f" | val loss {last_eval['val_loss']:.4f} at step {last_eval['step']}"
        if "hellaswag_acc_norm" in last_eval:
            text += f" | HellaSwag acc_norm {last_eval['hellaswag_acc_norm']:.4f}"
    elif val_loss is not None:
        text += f" | val loss {val_loss:.4f} (the checkpoint's)"
    return text + f" | last checkpoint {last_checkpoint or 'none'}"
