"""runlog.py: what a person reads of a run, the printed evaluation and loss.png."""

import argparse
import json

import matplotlib.image

from runlog import Logger, plot_log


def write_log(path, events):
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return str(path)


def test_loss_png_has_a_hellaswag_panel_only_with_something_in_it(tmp_path):
    events = [{"step": 0, "train_loss": 10.0}, {"step": 1, "val_loss": 9.0}]
    log = write_log(tmp_path / "a.jsonl", events)
    plot_log(log, str(tmp_path / "no_hella.png"), baselines=False)
    log_h = write_log(tmp_path / "b.jsonl", events + [{"step": 1, "val_loss": 9.0, "hellaswag_acc_norm": 0.25}])
    plot_log(log_h, str(tmp_path / "hella.png"), baselines=False)
    plot_log(log, str(tmp_path / "baselines.png"), baselines=True)  # OpenAI's acc_norm is drawn
    widths = {n: matplotlib.image.imread(str(tmp_path / f"{n}.png")).shape[1] for n in ("no_hella", "hella", "baselines")}
    assert widths == {"no_hella": 7 * 80, "hella": 14 * 80, "baselines": 14 * 80}  # inches x dpi


def test_samples_print_as_text(tmp_path, capsys):
    logger = Logger(str(tmp_path))
    args = argparse.Namespace(data_dir=str(tmp_path), log_dir=str(tmp_path))
    logger.log_evaluation({"step": 3, "val_loss": 5.0, "samples": ["Hello, it's \"me\"\nsecond line"]}, args)
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == ["sample: Hello, it's \"me\"", "        second line"]
