"""What a person sees first (issue 18): --help printed before torch is imported, short and with
every default shown once and as something that can be typed, and errors that say which flag and
which value were wrong, in one line."""

import os
import subprocess
import sys

import pytest

import hellaswag
import sample
import train_args
import train_gpt2
from common import HelpFormatter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -----------------------------------------------------------------------------
# --help before torch

# an import of torch fails outright, so that a --help that needs it cannot pass by accident
NO_TORCH = """\
import runpy, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch imported before --help was printed")
sys.meta_path.insert(0, NoTorch())
sys.argv = [{script!r}] + {args!r}
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.parametrize("script", ["train_gpt2.py", "sample.py", "hellaswag.py", "fineweb.py"])
def test_help_needs_no_torch(script):
    code = NO_TORCH.format(script=script, args=["--help"])
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ") and "--help" in r.stdout
    assert "Traceback" not in r.stderr


def test_preset_help_needs_no_torch():
    """--preset cpu --help reads the preset first, still without torch."""
    code = NO_TORCH.format(script="train_gpt2.py", args=["--preset", "cpu", "--help"])
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "torch.compile the model (default: --no-compile)" in " ".join(r.stdout.split())


# -----------------------------------------------------------------------------
# every default shown, once, as something a user can type


def train_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        train_args.parse_args(argv + ["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def flag_help(text, flag):
    """The help of one flag in --help's text, on one line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(flag + " ") or line.strip() == flag
                 or line.strip().startswith(flag + ","))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("  -")), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def test_cpu_preset_help_shows_valid_flags(capsys):
    text = train_help(["--preset", "cpu"], capsys)
    flat = " ".join(text.split())
    assert "--compile False" not in flat and "False" not in flat and "True" not in flat
    assert "--dtype float32 --no-compile" in flat  # the preset's list, as it would be typed
    assert flag_help(text, "--compile").endswith("(default: --no-compile)")
    assert flag_help(text, "--fsdp").endswith("(default: off)")
    # without the preset: its own defaults
    text = train_help([], capsys)
    assert flag_help(text, "--compile").endswith("(default: --compile)")
    assert flag_help(text, "--tie_embeddings").endswith("(default: --tie_embeddings)")
    assert flag_help(text, "--rotary").endswith("(default: --no-rotary)")


@pytest.mark.parametrize("module", [train_args, hellaswag, sample])
def test_every_flag_shows_its_default_once(module):
    p = module.get_parser()
    formatter = HelpFormatter(p.prog)
    for action in p._actions:
        if action.dest == "help":
            continue
        text = formatter._expand_help(action)
        assert text.count("(default") == 1, (action.option_strings, text)
        assert "(default: True)" not in text and "(default: False)" not in text, action.option_strings
    flat = " ".join(p.format_help().split())
    assert "(default: off) (default:" not in flat


def test_hellaswag_benchmark_default_once():
    flat = " ".join(hellaswag.get_parser().format_help().split())
    assert "first --limit examples (default: off) --benchmark_rounds" in flat


@pytest.mark.parametrize("flag, default", [
    ("--resume", "(default: off, a new run)"),
    ("--init_from", "(default: none, random weights)"),
    ("--stop_at_step", "(default: off, run to --max_steps)"),
    ("--consolidate", "(default: off, train)"),
])
def test_flags_without_a_value_say_what_happens(flag, default, capsys):
    assert flag_help(train_help([], capsys), flag).endswith(default)


def test_preset_help_is_one_line_a_preset(capsys):
    text = train_help([], capsys)
    lines = [line.strip() for line in text.splitlines()]
    for name, settings in train_args.PRESETS.items():
        line = next(i for i, s in enumerate(lines) if s.startswith(f"{name}: "))
        # its flags follow on that line and the lines wrapped under it, before the next preset
        following = " ".join(lines[line: line + 8])
        assert (train_args.as_flags(settings) or "the defaults below").split()[0] in following, name
    assert "(default: gpt2-124m)" in " ".join(flag_help(text, "--preset").split())


def test_hellaswag_help_is_short():
    text = hellaswag.get_parser().format_help()
    description = text.split("\n\n")[1:3]  # after the usage: the text, then the examples
    assert sum(len(part.splitlines()) for part in description) <= 10, description
    assert text.count("python hellaswag.py") >= 2  # examples
    assert "acc_norm the lowest mean per token" not in " ".join(text.split())
    # the method still has a home: the module's docstring
    assert "acc_norm the lowest mean per token" in " ".join(hellaswag.__doc__.split())


def test_hellaswag_help_names_every_hub_model():
    from model import HF_GPT2_NAMES  # the help spells them out so as not to import model.py (torch)

    assert "|".join(HF_GPT2_NAMES) in hellaswag.get_parser().format_help()


# -----------------------------------------------------------------------------
# errors that say what was wrong


def one_line_error(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.strip()


def test_consolidate_missing_path(tmp_path, capsys):
    err = one_line_error(train_gpt2.main, ["--consolidate", str(tmp_path / "no_such")], capsys)
    assert err == (f"train_gpt2.py: error: --consolidate {tmp_path / 'no_such'} does not exist; "
                   f"give a model_XXXXX folder that train_gpt2.py --fsdp wrote")


def test_consolidate_file(tmp_path, capsys):
    (tmp_path / "model_00010.pt").write_bytes(b"")
    err = one_line_error(train_gpt2.main, ["--consolidate", str(tmp_path / "model_00010.pt")], capsys)
    assert "model_00010.pt is a file, not a folder (a single-file checkpoint already: use it as it is); " \
           "give a model_XXXXX folder that train_gpt2.py --fsdp wrote" in err


def test_consolidate_folder_without_train_state(tmp_path, capsys):
    err = one_line_error(train_gpt2.main, ["--consolidate", str(tmp_path)], capsys)
    assert f"--consolidate {tmp_path} is a folder without train_state.pt, not a sharded checkpoint; " \
           f"give a model_XXXXX folder that train_gpt2.py --fsdp wrote" in err


@pytest.mark.parametrize("argv, line", [
    (["--num_samples", "0"], "--num_samples must be >= 1, got 0"),
    (["--max_new_tokens", "-1"], "--max_new_tokens must be >= 0, got -1"),
    (["--top_k", "-5"], "--top_k must be >= 0, got -5"),
])
def test_sample_names_the_wrong_flag(argv, line, capsys):
    assert one_line_error(sample.main, argv, capsys) == f"sample.py: error: {line}"


def test_model_py_names_the_wrong_flag():
    r = subprocess.run([sys.executable, "model.py", "--top_k", "-5"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr == "sample.py: error: --top_k must be >= 0, got -5\n", r.stderr
