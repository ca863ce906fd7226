"""
What a run leaves for a person to read: log.jsonl (one JSON object per event, rank 0 only) and
loss.png drawn from it.
"""

import json
import os

from common import write_atomic


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
            write_atomic(self.path, "".join(json.dumps(e) + "\n" for e in keep).encode())

    def log(self, **event):
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")

    def log_evaluation(self, event, args):
        """An evaluation's line and samples printed, its event logged, loss.png redrawn."""
        msg = f"step {event['step']:5d} | val loss {event['val_loss']:.4f}"
        if "hellaswag_n" in event:
            n, correct_norm = event["hellaswag_n"], round(event["hellaswag_acc_norm"] * event["hellaswag_n"])
            msg += f" | HellaSwag acc_norm {correct_norm}/{n} = {event['hellaswag_acc_norm']:.4f}"
        print(msg)
        for text in event.get("samples", []):
            print(f"sample: {text!r}")
        self.log(**event)
        baselines = "fineweb" in os.path.abspath(args.data_dir).lower()  # OpenAI's 124M figures for comparison
        plot_log(self.path, os.path.join(args.log_dir, "loss.png"), baselines)


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
    if hella:
        ax2.plot(*zip(*hella), label="ours", marker="o", ms=3)
    for ax, title, ylabel, openai in ((ax1, "loss", "loss", 3.2924), (ax2, "HellaSwag", "acc_norm", 0.2955)):
        if baselines:  # OpenAI's GPT-2 124M: its FineWeb val loss and HellaSwag acc_norm
            ax.axhline(openai, color="r", ls="--", label="OpenAI GPT-2 (124M)" + (" val loss" if ax is ax1 else ""))
        ax.set(xlabel="step", ylabel=ylabel, title=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    write_atomic(png_path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)
