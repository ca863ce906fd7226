"""compare_recipes.py: the report's arithmetic on hand-made logs, and --quick end to end on a tiny
corpus of small token ids."""

import json
import os

import numpy as np
import pytest

import compare_recipes as cr
from shards import write_manifest, write_shard


def test_val_curve_and_tokens_to_reach_interpolate_between_evaluations():
    # a log.jsonl's events, out of order, with training steps between the evaluations
    events = [{"step": 20, "val_loss": 6.0}, {"step": 0, "val_loss": 10.0}, {"step": 5, "train_loss": 9.0, "dt_ms": 40.0},
              {"step": 10, "val_loss": 8.0}, {"step": 30, "val_loss": 5.0}, {"step": 40, "val_loss": 5.5}]
    curve = cr.val_curve(events, step_tokens=100)
    assert curve == [(0, 10.0), (1000, 8.0), (2000, 6.0), (3000, 5.0), (4000, 5.5)]
    # 7.0 lies half way from 8.0 (1000 tokens) to 6.0 (2000 tokens)
    assert cr.tokens_to_reach(curve, 7.0) == pytest.approx(1500)
    # a quarter of the way from 6.0 (2000) to 5.0 (3000)
    assert cr.tokens_to_reach(curve, 5.75) == pytest.approx(2250)
    assert cr.tokens_to_reach(curve, 8.0) == 1000  # met exactly at an evaluation
    assert cr.tokens_to_reach(curve, 11.0) == 0  # met before training
    assert cr.tokens_to_reach(curve, 5.2) == pytest.approx(2000 + 1000 * 0.8)  # the first crossing, not the last point
    assert cr.tokens_to_reach(curve, 4.9) is None  # never
    assert cr.tokens_to_reach([], 4.9) is None


def test_step_time_is_the_median_without_the_first_step():
    events = [{"step": 0, "dt_ms": 900.0}, {"step": 1, "dt_ms": 30.0}, {"step": 2, "dt_ms": 10.0},
              {"step": 3, "dt_ms": 20.0}, {"step": 3, "val_loss": 1.0}]
    assert cr.step_time_ms(events) == 20.0
    assert cr.step_time_ms(events + [{"step": 4, "dt_ms": 50.0}]) == 25.0
    assert cr.step_time_ms([{"step": 0, "dt_ms": 900.0}]) is None


def run(name, recipe, final, curve, budget=2000):
    return {"name": name, "recipe": recipe, "final_val_loss": final, "curve": curve, "params": 1, "block_params": 1,
            "step_ms": 1.0, "budget": budget}


def test_compare_picks_the_best_final_loss_of_each_recipe_and_divides_their_tokens():
    runs = [
        run("gpt2_a", "gpt2", 5.0, [(0, 10.0), (1000, 6.0), (2000, 5.0)]),
        run("gpt2_b", "gpt2", 4.0, [(0, 10.0), (1000, 5.0), (2000, 4.0)]),  # the baseline: lowest final loss
        run("gpt2_diverged", "gpt2", None, [(0, 10.0), (1000, 3.0)]),        # unfinished: never the baseline
        run("modern_a", "modern", 3.0, [(0, 10.0), (1000, 3.5), (2000, 3.0)]),  # the pick: lowest final loss
        run("modern_b", "modern", 3.9, [(0, 10.0), (1000, 3.9), (2000, 3.9)]),  # reaches 4.0 sooner, not picked
    ]
    report = cr.compare(runs)
    assert (report["baseline"], report["modern"], report["target_val_loss"]) == ("gpt2_b", "modern_a", 4.0)
    # the baseline reaches its own final loss at its last evaluation; modern_a at 1000 * (10-4)/(10-3.5) tokens
    assert report["baseline_tokens"] == 2000
    assert report["modern_tokens"] == pytest.approx(1000 * 6 / 6.5)
    assert report["ratio"] == pytest.approx(1000 * 6 / 6.5 / 2000)
    assert [r["tokens_to_target"] for r in runs][:3] == [None, 2000, pytest.approx(1000 * 6 / 7)]
    text = cr.table(runs, report)
    assert "baseline gpt2_b: final val loss 4.0000 at 2,000 tokens" in text
    assert f"{report['ratio']:.3f} of the baseline's" in text and "unfinished" in text

    # a modern pick that never gets there: no ratio, and the table says so
    runs[3]["curve"] = [(0, 10.0), (2000, 4.5)]
    runs[3]["final_val_loss"], runs[4]["final_val_loss"] = 4.5, 4.6
    report = cr.compare(runs)
    assert report["modern"] == "modern_a" and report["ratio"] is None
    assert "does not reach it within the budget" in cr.table(runs, report)
    assert report["complete"] is None and "no modern run finishes at or below it" in cr.table(runs, report)


def test_the_smallest_complete_modern_budget_at_or_below_the_target():
    """Shorter modern runs, each with its schedule ending at its budget: the report names the
    smallest budget whose run finishes at or below the baseline's final val loss."""
    runs = [
        run("gpt2_a", "gpt2", 4.0, [(0, 10.0), (2000, 3.9), (4000, 4.0)], budget=4000),  # dips below its end early
        run("gpt2_b", "gpt2", 4.2, [(0, 10.0), (4000, 4.2)], budget=4000),
        run("gpt2_c", "gpt2", 4.4, [(0, 10.0), (4000, 4.4)], budget=4000),
        run("modern_500", "modern", 4.3, [(0, 10.0), (500, 4.3)], budget=500),     # not low enough
        run("modern_1000", "modern", 3.95, [(0, 10.0), (1000, 3.95)], budget=1000),  # the answer
        run("modern_1000b", "modern", 3.99, [(0, 10.0), (1000, 3.99)], budget=1000),
        run("modern_2000", "modern", 3.5, [(0, 10.0), (2000, 3.5)], budget=2000),
        run("modern_4000", "modern", 3.0, [(0, 10.0), (2000, 5.0), (4000, 3.0)], budget=4000),
    ]
    report = cr.compare(runs)
    # the full-budget pick is read off its curve as before; the shorter runs never are the pick
    assert report["modern"] == "modern_4000" and report["modern_tokens"] == pytest.approx(2000 + 2000 * 1 / 2)
    assert (report["complete"], report["complete_tokens"], report["complete_ratio"]) == ("modern_1000", 1000, 0.25)
    # gpt2_a's curve first reaches 4.0 at 2000 * 6 / 6.1 tokens, on its way to the dip
    assert report["baseline_tokens"] == pytest.approx(2000 * 6 / 6.1)
    assert report["complete_ratio_read"] == pytest.approx(1000 / (2000 * 6 / 6.1))
    assert "modern_1000, 1,000 tokens, 0.250 of the baseline's budget (4.00x fewer), 0.508 of the tokens" in cr.table(runs, report)


def test_edge_warnings_name_a_grid_whose_best_is_at_its_end():
    runs = [run("a", "gpt2", 5.0, []), run("b", "gpt2", 4.0, []), run("c", "gpt2", 4.5, []), run("m", "modern", 3.0, [])]
    for r, lr in zip(runs, (1e-3, 2e-3, 4e-3, 1e-3)):
        r["max_lr"], r["muon_lr"] = lr, 0.02
    grids = {"--gpt2_lr": [1e-3, 2e-3, 4e-3], "--modern_lr": [1e-3, 2e-3], "--modern_muon_lr": [0.02]}
    notes = cr.edge_warnings(runs, grids)
    assert len(notes) == 1 and "modern run has modern_lr 0.001, at the edge of --modern_lr 0.001 0.002" in notes[0]
    runs[0]["final_val_loss"] = 3.0  # now gpt2's best is its lowest LR
    assert any("gpt2_lr 0.001" in n for n in cr.edge_warnings(runs, grids))


def test_bad_flags_are_one_line(tmp_path, capsys):
    for argv, message in [
        (["--gpt2_lr", "1e-3", "2e-3"], "--gpt2_lr needs at least 3 different values"),
        (["--max_steps", "10", "--eval_every", "3"], "--max_steps 10 is not a multiple of --eval_every 3"),
        (["--modern_lr", "0"], "--modern_lr values must be > 0"),
        (["--modern_steps", "9"], "--modern_steps must lie in [1, --max_steps 4], got 4 9"),
        (["--modern_steps", "1"], "--modern_steps 1 is too short for its warmup (1 steps, --warmup_steps scaled)"),
        (["--data_dir", str(tmp_path / "none")], f"--data_dir {tmp_path / 'none'} is not a folder of token shards"),
    ]:
        with pytest.raises(SystemExit) as e:
            cr.main(["--quick", "--out_dir", str(tmp_path / "out")] + argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("compare_recipes.py: error: ")
        assert message in err, err
    assert not os.path.exists(tmp_path / "out")


@pytest.fixture
def tiny_corpus(tmp_path):
    """Shards of a small, learnable token stream (a noisy cycle of 64 ids), so that a 6-step run's
    loss falls; made in an instant, where tokenizing a text corpus takes seconds."""
    rng = np.random.default_rng(0)
    tokens = np.arange(20_000) % 64
    tokens[rng.random(len(tokens)) < 0.1] = rng.integers(64, 128, 1)
    d = str(tmp_path / "data")
    write_shard(os.path.join(d, "tiny_val_000000.bin"), tokens[:2000])
    write_shard(os.path.join(d, "tiny_train_000001.bin"), tokens[2000:])
    write_manifest(d)
    return d


def test_quick_end_to_end(tiny_corpus, tmp_path, capsys, monkeypatch):
    import runlog

    # each run's loss.png, redrawn at every evaluation, would be most of this test's time (runlog's
    # own tests draw it); compare.png is still drawn
    monkeypatch.setattr(runlog, "plot_log", lambda *a, **k: None)
    out = str(tmp_path / "cmp")
    results = cr.main(["--quick", "--data_dir", tiny_corpus, "--out_dir", out])
    printed = capsys.readouterr().out
    runs = results["runs"]
    assert [r["name"] for r in runs] == ["gpt2_lr0.001", "gpt2_lr0.002", "gpt2_lr0.004", "modern_lr0.002_muon0.02_steps2",
                                         "modern_lr0.002_muon0.02"]
    step_tokens = cr.QUICK["batch_size"] * cr.QUICK["seq_len"]
    for r in runs:
        # the curve is the run's own log.jsonl, read here with json alone
        with open(os.path.join(out, r["name"], "log.jsonl")) as f:
            events = [json.loads(line) for line in f if line.strip()]
        evals = [(e["step"] * step_tokens, e["val_loss"]) for e in events if "val_loss" in e]
        steps = r["budget"] // step_tokens
        assert [tuple(p) for p in r["curve"]] == evals and len(evals) == steps // cr.QUICK["eval_every"] + 1
        assert r["finished"] and r["final_val_loss"] == evals[-1][1] < evals[0][1]
        assert r["step_ms"] > 0
    # parameters: GPT-2's tied head counted once; the modern one's own lm_head, no wpe, no norm gains
    n, d, T, V = cr.QUICK["n_layer"], cr.QUICK["n_embd"], cr.QUICK["seq_len"], 50304
    gpt2_blocks = n * (12 * d * d + 13 * d)  # attention 4d^2+4d, MLP 8d^2+5d, two LayerNorms 4d
    assert runs[0]["block_params"] == gpt2_blocks and runs[0]["params"] == gpt2_blocks + V * d + T * d + 2 * d
    modern_blocks = n * (12 * d * d + 9 * d)  # the same matrices and biases, parameter-free RMSNorm
    assert runs[4]["block_params"] == modern_blocks and runs[4]["params"] == modern_blocks + 2 * V * d

    report = results["report"]
    finals = {r["name"]: r["final_val_loss"] for r in runs}
    baseline = min(list(finals)[:3], key=finals.get)
    assert report["baseline"] == baseline and report["target_val_loss"] == finals[baseline]
    modern = runs[4]
    expected = cr.tokens_to_reach(modern["curve"], finals[baseline])
    assert report["modern_tokens"] == expected
    if expected is not None:
        assert report["ratio"] == pytest.approx(expected / report["baseline_tokens"])
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["report"] == json.loads(json.dumps(report))
    assert os.path.getsize(os.path.join(out, "compare.png")) > 1000
    assert f"baseline {baseline}: final val loss {finals[baseline]:.4f}" in printed

    # --report_only reads the same logs again and trains nothing
    again = cr.main(["--quick", "--data_dir", tiny_corpus, "--out_dir", out, "--report_only"])
    assert again["report"] == report and [r["curve"] for r in again["runs"]] == [r["curve"] for r in runs]
    # run again, with one more GPT-2 LR: only that run trains; the others finished with the same flags
    capsys.readouterr()
    more = cr.main(["--quick", "--data_dir", tiny_corpus, "--out_dir", out, "--gpt2_lr", "1e-3", "2e-3", "4e-3", "8e-3"])
    printed = capsys.readouterr().out
    assert printed.count("finished before with these flags, not trained again") == 5
    assert "=== gpt2_lr0.008: python train_gpt2.py" in printed
    assert [r["curve"] for r in more["runs"] if r["name"] != "gpt2_lr0.008"] == [r["curve"] for r in runs]


def test_read_run_counts_a_run_finished_only_with_its_last_evaluation(tmp_path):
    args = cr.check_args(cr.get_parser().parse_args(["--quick", "--data_dir", str(tmp_path), "--out_dir", str(tmp_path)]))
    step_tokens = args.batch_size * args.seq_len
    os.makedirs(tmp_path / "gpt2_lr0.001")
    for last_step, finished in ((args.max_steps, True), (args.max_steps - args.eval_every, False)):
        with open(tmp_path / "gpt2_lr0.001" / "log.jsonl", "w") as f:
            for step in range(0, last_step + 1, args.eval_every):
                f.write(json.dumps({"step": step, "val_loss": 10.0 - step}) + "\n")
                f.write(json.dumps({"step": step, "train_loss": 10.0 - step, "dt_ms": 5.0 + step}) + "\n")
        r = cr.read_run(args, "gpt2_lr0.001", "gpt2", 1e-3, None, args.max_steps)
        assert r["finished"] is finished and r["curve"][-1] == (last_step * step_tokens, 10.0 - last_step)
        assert r["final_val_loss"] == (10.0 - last_step if finished else None)
    with pytest.raises(cr.UserError, match="gpt2_lr0.002.*has not been trained"):
        cr.read_run(args, "gpt2_lr0.002", "gpt2", 2e-3, None, args.max_steps)


def test_a_shorter_modern_run_is_the_whole_schedule_scaled(tmp_path):
    """A run of a quarter of the budget warms up for a quarter of the steps (its cooldown, the last
    40% of its own steps, scales by itself)."""
    args = cr.check_args(cr.get_parser().parse_args(["--data_dir", str(tmp_path), "--max_steps", "480", "--warmup_steps", "48",
                                                     "--eval_every", "24", "--modern_steps", "120"]))
    assert args.modern_steps == [120, 480]
    specs = {name: spec for name, *spec in cr.plan(args)}
    argv = cr.train_argv(args, *specs["modern_lr0.012_muon0.02_steps120"], log_dir="x")
    assert argv[argv.index("--max_steps") + 1] == "120" and argv[argv.index("--warmup_steps") + 1] == "12"
    argv = cr.train_argv(args, *specs["gpt2_lr0.003"], log_dir="x")
    assert argv[argv.index("--max_steps") + 1] == "480" and argv[argv.index("--warmup_steps") + 1] == "48"
