"""
The GPT-2 recipe against the modern one (train_gpt2.py --recipe gpt2|modern), side by side: both
trained on the same data, with the same model size, batch and token budget, GPT-2's --max_lr tuned
over a grid (its best final val loss is the baseline) and the modern recipe's learning rates over
their own grid. Reported: val loss against tokens for every run, the tokens each run needs to reach
the baseline's final val loss (read off its val curve, linearly interpolated between evaluations),
the modern recipe's ratio of those tokens to the baseline's, parameter counts and time per step;
then modern runs at smaller budgets (--modern_steps), each a whole schedule ending at its budget,
and the smallest whose final val loss is at or below the baseline's, as a fraction of its tokens.

The data set (Debian's Linux kernel documentation, 10.2M tokens, its files shuffled: in path order a
stretch of training is one subsystem's documents; see fineweb.py), then the comparison:

    cd /tmp && apt-get download linux-doc-6.1 && dpkg-deb -x linux-doc-6.1_*.deb /tmp/linuxdoc && cd -
    python fineweb.py --input /tmp/linuxdoc/usr/share/doc/linux-doc-6.1/Documentation --out_dir data/linuxdoc --val_tokens 262144 --shuffle 1337
    python compare_recipes.py --modern_steps 120 160 240     # -> log_compare/, 40 min on 2 cores

The pipeline end to end in seconds, on the embedded corpus (figures not worth reading):

    python compare_recipes.py --quick --data_dir data/pydoc --out_dir log_compare_quick

Outputs in --out_dir: one train_gpt2.py log folder per run (log.jsonl, loss.png, its checkpoint),
results.json (every run's flags, curve, parameters, time per step; the baseline, the ratio; the CPU)
and compare.png (the val curves). The runs go one after another in this process, through
train_gpt2.main, with HellaSwag and samples off; a run whose loss blows up is reported as diverged
and the others go on.

The first ratio is the modern pick's tokens to the target over the baseline's own (its last
evaluation, or an earlier one already as low), both read off curves whose LR schedule ends at the
full budget: warmup-stable-decay drops most of its loss in its cooldown, so this overstates what the
modern recipe needs; the second ratio, of whole shorter runs, does not. Time per step is the median
of a run's steps; on a shared machine compare it only between runs of a similar load (the table's
load column: the 1-minute load average at the run's end).
"""

import json
import os
import platform
import time

from common import ArgumentParser, UserError, exit_on_user_error, write_atomic
from fineweb import EMBEDDED_OUT_DIR

RECIPES = ("gpt2", "modern")
# the comparison's default: the prototype size (4 layers x 64 wide, context 256) and a
# budget that takes minutes per run on a 2-core CPU, where GPT-2's 50304 x 64 lm_head is most of the
# work; GPT-2's grid has its best inside it, the modern LR is the best of an earlier grid (README,
# "Measured: tokens to GPT-2's val loss")
DEFAULTS = dict(n_layer=4, n_head=4, n_embd=64, seq_len=256, batch_size=4, max_steps=480, warmup_steps=48,
                eval_every=24, val_steps=16, gpt2_lr=[3e-3, 6e-3, 1.2e-2], modern_lr=[1.2e-2],
                modern_muon_lr=[0.02], modern_steps=None)
# --quick: a tiny model and budget, to try the whole pipeline (a test runs it)
QUICK = dict(n_layer=2, n_head=2, n_embd=16, seq_len=16, batch_size=2, max_steps=4, warmup_steps=1,
             eval_every=2, val_steps=1, gpt2_lr=[1e-3, 2e-3, 4e-3], modern_lr=[2e-3], modern_muon_lr=[0.02],
             modern_steps=[2, 4])


# -----------------------------------------------------------------------------
# the arithmetic of the report


def val_curve(events, step_tokens):
    """[(tokens seen, val loss)] of a log.jsonl's evaluations, in step order."""
    return [(e["step"] * step_tokens, e["val_loss"]) for e in sorted(events, key=lambda e: e["step"]) if "val_loss" in e]


def tokens_to_reach(curve, target):
    """The tokens at which a val curve [(tokens, loss), ...] first reaches target (loss <= target),
    linearly interpolated between the evaluation before and the one that reaches it; None if none
    does."""
    prev = None
    for tokens, loss in curve:
        if loss <= target:
            if prev is None:
                return tokens
            t0, l0 = prev  # l0 > target >= loss
            return t0 + (tokens - t0) * (l0 - target) / (l0 - loss)
        prev = tokens, loss
    return None


def step_time_ms(events):
    """The median time of a training step (ms) in log.jsonl, without the first step (which warms up
    the allocator and, compiled, compiles). Evaluations are not in it."""
    dts = sorted(e["dt_ms"] for e in events if "dt_ms" in e and e["step"] > 0)
    if not dts:
        return None
    mid = len(dts) // 2
    return dts[mid] if len(dts) % 2 else (dts[mid - 1] + dts[mid]) / 2


def compare(runs):
    """The report of finished runs (dicts with recipe, budget, final_val_loss, curve): the baseline
    is the GPT-2 run with the lowest final val loss, the modern pick the modern run of the full
    budget with the lowest final val loss (chosen as the baseline is, not by the ratio); each
    run's tokens to the baseline's final val loss, and the modern pick's ratio to the baseline's.
    Then the complete runs: the smallest budget at which a modern run, its schedule ending there,
    finishes at or below the baseline's final val loss, and its ratio to the baseline's tokens."""
    full = max(r["budget"] for r in runs)
    best = {}
    for recipe in RECIPES:
        done = [r for r in runs if r["recipe"] == recipe and r["final_val_loss"] is not None and r["budget"] == full]
        best[recipe] = min(done, key=lambda r: r["final_val_loss"]) if done else None
    baseline, modern = best["gpt2"], best["modern"]
    report = {"baseline": baseline and baseline["name"], "modern": modern and modern["name"],
              "target_val_loss": baseline and baseline["final_val_loss"]}
    for r in runs:
        r["tokens_to_target"] = tokens_to_reach(r["curve"], baseline["final_val_loss"]) if baseline else None
    if baseline and modern:
        report["baseline_tokens"] = baseline["tokens_to_target"]
        report["modern_tokens"] = modern["tokens_to_target"]
        report["ratio"] = (modern["tokens_to_target"] / baseline["tokens_to_target"]
                           if modern["tokens_to_target"] is not None else None)
    if baseline:
        there = [r for r in runs if r["recipe"] == "modern" and r["final_val_loss"] is not None
                 and r["final_val_loss"] <= baseline["final_val_loss"]]
        first = min(there, key=lambda r: (r["budget"], r["final_val_loss"])) if there else None
        report["complete"] = first and first["name"]
        report["complete_tokens"] = first and first["budget"]
        # whole run against whole run; and against the first point of GPT-2's curve as low as its
        # end (a noisy curve may dip there early), the stricter reading
        report["complete_ratio"] = first and first["budget"] / baseline["budget"]
        report["complete_ratio_read"] = first and first["budget"] / baseline["tokens_to_target"]
    return report


def edge_warnings(runs, grids):
    """A note for each grid whose best value is at its edge: the optimum may lie beyond it."""
    notes = []
    for recipe, flag, key in (("gpt2", "--gpt2_lr", "max_lr"), ("modern", "--modern_lr", "max_lr"),
                              ("modern", "--modern_muon_lr", "muon_lr")):
        grid = sorted(set(grids[flag]))
        done = [r for r in runs if r["recipe"] == recipe and r["final_val_loss"] is not None]
        if len(grid) > 1 and done:
            value = min(done, key=lambda r: r["final_val_loss"])[key]
            if value in (grid[0], grid[-1]):
                notes.append(f"the best {recipe} run has {flag.lstrip('-')} {value:g}, at the edge of {flag} {' '.join(f'{v:g}' for v in grid)}: "
                             f"the optimum may lie beyond it")
    return notes


def table(runs, report):
    """The report as text: one row per run, then the baseline, the target and the ratio."""
    target = report["target_val_loss"]
    head = f"tokens to {target:.4f}" if target is not None else "tokens to target"
    rows = [f"{'run':<28} {'params':>9} {'in blocks':>9} {'final val':>9} {head:>17} {'ms/step':>8} {'load':>5}"]
    for r in runs:
        val = f"{r['final_val_loss']:.4f}" if r["final_val_loss"] is not None else "unfinished"
        tok = f"{r['tokens_to_target']:,.0f}" if r.get("tokens_to_target") is not None else "not reached"
        ms = f"{r['step_ms']:.0f}" if r.get("step_ms") is not None else "-"
        load = f"{r['load_average']:.1f}" if r.get("load_average") is not None else "-"
        rows.append(f"{r['name']:<28} {r['params']:>9,} {r['block_params']:>9,} {val:>9} {tok:>17} {ms:>8} {load:>5}")
    if report["baseline"] is None:
        rows.append("no GPT-2 run finished: no baseline")
    else:
        rows.append(f"baseline {report['baseline']}: final val loss {target:.4f} at {report['baseline_tokens']:,.0f} tokens")
    if report.get("ratio") is not None:
        rows.append(f"modern {report['modern']}: reaches it at {report['modern_tokens']:,.0f} tokens, "
                    f"{report['ratio']:.3f} of the baseline's ({1 / report['ratio']:.2f}x fewer)")
    elif report["modern"] is not None and report["baseline"] is not None:
        rows.append(f"modern {report['modern']}: does not reach it within the budget")
    if report.get("complete"):
        rows.append(f"the smallest budget at which a modern run, its schedule ending there, finishes at or below it: "
                    f"{report['complete']}, {report['complete_tokens']:,} tokens, {report['complete_ratio']:.3f} of the "
                    f"baseline's budget ({1 / report['complete_ratio']:.2f}x fewer), {report['complete_ratio_read']:.3f} "
                    f"of the tokens at which the baseline's curve first reaches its final val loss")
    elif report["baseline"] is not None and any(r["recipe"] == "modern" for r in runs):
        rows.append("no modern run finishes at or below it")
    return "\n".join(rows)


def plot(runs, report, png_path, title):
    """compare.png: every run's val loss against tokens, each recipe in its colour, its pick drawn
    bold; the baseline's final val loss as a line, and where the modern pick reaches it."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = {"gpt2": "tab:blue", "modern": "tab:orange"}
    for r in runs:
        if not r["curve"]:
            continue
        picked = r["name"] in (report["baseline"], report["modern"])
        ax.plot(*zip(*r["curve"]), color=colours[r["recipe"]], lw=2.2 if picked else 0.8, alpha=1 if picked else 0.5,
                marker="o" if picked else None, ms=3, label=r["name"] + (" (picked)" if picked else ""))
    if report["target_val_loss"] is not None:
        ax.axhline(report["target_val_loss"], color="gray", ls="--", lw=0.8, label=f"baseline's final val loss {report['target_val_loss']:.4f}")
    if report.get("modern_tokens") is not None:
        ax.axvline(report["modern_tokens"], color=colours["modern"], ls=":", lw=1,
                   label=f"modern reaches it: {report['ratio']:.3f} of the tokens")
    finals = [r["final_val_loss"] for r in runs if r["final_val_loss"] is not None]
    if finals:  # the early losses (~10.8) would squash the part worth reading
        ax.set_ylim(min(finals) - 0.2, min(finals) + 2.5)
    ax.set(xlabel="tokens", ylabel="val loss")
    ax.set_title(title.replace("; ", "\n", 1), fontsize=10)  # the size, then the budget and data
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(png_path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


# -----------------------------------------------------------------------------
# the runs


def plan(args):
    """(name, recipe, max_lr, muon_lr, steps) of every run, GPT-2's grid first, then the modern
    grid at each of --modern_steps (a run's schedule ends at its own steps)."""
    runs = [(f"gpt2_lr{lr:g}", "gpt2", lr, None, args.max_steps) for lr in args.gpt2_lr]
    runs += [(f"modern_lr{lr:g}_muon{mu:g}" + (f"_steps{n}" if n != args.max_steps else ""), "modern", lr, mu, n)
             for n in sorted(args.modern_steps) for lr in args.modern_lr for mu in args.modern_muon_lr]
    return runs


def warmup_for(args, steps):
    """A run's warmup: --warmup_steps scaled to its budget, as its cooldown is (a shorter modern run
    is the whole schedule in fewer steps)."""
    return max(1, round(args.warmup_steps * steps / args.max_steps))


def train_argv(args, recipe, max_lr, muon_lr, steps, log_dir):
    """train_gpt2.py's flags for one run: the cpu preset (float32, no compile), the shared size,
    batch and warmup, the run's budget (steps), recipe and learning rates; the rest is the
    recipe's default."""
    argv = ["--preset", "cpu", "--recipe", recipe, "--data_dir", args.data_dir, "--log_dir", log_dir,
            "--n_layer", args.n_layer, "--n_head", args.n_head, "--n_embd", args.n_embd,
            "--block_size", args.seq_len, "--seq_len", args.seq_len, "--batch_size", args.batch_size,
            "--total_batch_size", args.batch_size * args.seq_len, "--max_steps", steps,
            "--warmup_steps", warmup_for(args, steps), "--eval_every", args.eval_every, "--val_steps", args.val_steps,
            "--save_every", steps, "--seed", args.seed, "--device", args.device,
            "--no-hellaswag", "--num_samples", 0, "--max_lr", max_lr]
    if muon_lr is not None:
        argv += ["--muon_lr", muon_lr]
    if args.overwrite:
        argv.append("--overwrite")
    return [str(a) for a in argv]


def already_done(argv, steps):
    """Whether the run of argv finished before with the same flags: its last checkpoint is there and
    records them. A comparison stopped half way then goes on where it was."""
    from checkpoint import read_checkpoint, same_data
    from train_args import parse_args

    args = vars(parse_args(argv))
    path = os.path.join(args["log_dir"], f"model_{steps:05d}.pt")
    try:
        ckpt = read_checkpoint(path, mmap=True, keys=("args",))
    except (OSError, ValueError):
        return False
    same_flags = all(ckpt["args"].get(k) == v for k, v in args.items() if k not in ("overwrite", "log_dir", "data_dir"))
    return same_flags and same_data(args["data_dir"], ckpt)


def train_one(args, name, recipe, max_lr, muon_lr, steps):
    """One run through train_gpt2.main, unless it finished before with the same flags; a loss that
    blows up ends it, and the comparison goes on. Returns its wall time and the load average at
    its end (on a shared machine, the time per step of two runs compares only at a similar load)."""
    import train_gpt2

    argv = train_argv(args, recipe, max_lr, muon_lr, steps, os.path.join(args.out_dir, name))
    if not args.overwrite and already_done(argv, steps):
        print(f"=== {name}: finished before with these flags, not trained again (--overwrite trains it)", flush=True)
        return None
    print(f"=== {name}: python train_gpt2.py {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    try:
        train_gpt2.main(argv)
    except FloatingPointError as e:  # a learning rate too high is one of the grid's results
        print(f"=== {name} diverged: {e}")
    return {"seconds": time.perf_counter() - t0, "load_average": os.getloadavg()[0]}


def read_run(args, name, recipe, max_lr, muon_lr, steps, timing=None):
    """What the report needs from a run's log.jsonl and flags. A run counts as finished when it
    evaluated at --max_steps (one that diverged, or was stopped, has no final val loss)."""
    import torch

    from model import GPT
    from runlog import read_log
    from train_args import config_from_args, parse_args

    log_dir = os.path.join(args.out_dir, name)
    argv = train_argv(args, recipe, max_lr, muon_lr, steps, log_dir)
    path = os.path.join(log_dir, "log.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing: run {name} has not been trained; run without --report_only")
    events = read_log(path)
    curve = val_curve(events, args.batch_size * args.seq_len)
    budget = steps * args.batch_size * args.seq_len
    finished = bool(curve) and curve[-1][0] == budget
    with torch.device("meta"):  # the parameter counts need the shapes only, not the weights
        model = GPT(config_from_args(parse_args(argv)))
    return {
        "name": name, "recipe": recipe, "max_lr": max_lr, "muon_lr": muon_lr, "budget": budget, "argv": argv, "log_dir": log_dir,
        "params": model.num_params(), "block_params": sum(p.numel() for p in model.transformer.h.parameters()),
        "curve": curve, "final_val_loss": curve[-1][1] if finished else None, "finished": finished,
        "step_ms": step_time_ms(events), **(timing or {"seconds": None, "load_average": None}),
    }


def cpu_name():
    """The CPU as /proc/cpuinfo names it (platform.processor() elsewhere), and the cores we may use."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"


# -----------------------------------------------------------------------------
# command line


def get_parser():
    p = ArgumentParser("compare_recipes.py", description=__doc__)
    a = p.add_argument
    a("--data_dir", default=os.path.join("data", "linuxdoc"), help="the token shards both recipes train on (fineweb.py)")
    a("--out_dir", default="log_compare", help="folder for the runs' logs, results.json and compare.png")
    a("--quick", action="store_true",
      help="a tiny model, budget and grid (" + " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in QUICK.items())
           + ") to try the pipeline in seconds; explicit flags override it")
    size = p.add_argument_group("model, batch and budget (the same for every run)")
    size.add_argument("--n_layer", type=int, default=None, help=f"transformer blocks (default {DEFAULTS['n_layer']})")
    size.add_argument("--n_head", type=int, default=None, help=f"attention heads (default {DEFAULTS['n_head']})")
    size.add_argument("--n_embd", type=int, default=None, help=f"width (default {DEFAULTS['n_embd']})")
    size.add_argument("--seq_len", type=int, default=None, help=f"tokens per sequence, and the context (default {DEFAULTS['seq_len']})")
    size.add_argument("--batch_size", type=int, default=None,
                      help=f"sequences per optimizer step, one micro-step (default {DEFAULTS['batch_size']})")
    size.add_argument("--max_steps", type=int, default=None,
                      help=f"optimizer steps of every run: the token budget is max_steps * batch_size * seq_len (default {DEFAULTS['max_steps']})")
    size.add_argument("--warmup_steps", type=int, default=None, help=f"LR warmup steps of both recipes (default {DEFAULTS['warmup_steps']})")
    size.add_argument("--eval_every", type=int, default=None,
                      help=f"steps between evaluations, the points of the val curves (default {DEFAULTS['eval_every']})")
    size.add_argument("--val_steps", type=int, default=None,
                      help=f"validation batches per evaluation, the same batches each time (default {DEFAULTS['val_steps']})")
    grid = p.add_argument_group("learning-rate grids")
    grid.add_argument("--gpt2_lr", type=float, nargs="+", default=None,
                      help=f"--max_lr values of the GPT-2 recipe, at least 3 (default {' '.join(map(str, DEFAULTS['gpt2_lr']))})")
    grid.add_argument("--modern_lr", type=float, nargs="+", default=None,
                      help=f"--max_lr values (AdamW: embeddings, head, gains) of the modern recipe (default {' '.join(map(str, DEFAULTS['modern_lr']))})")
    grid.add_argument("--modern_muon_lr", type=float, nargs="+", default=None,
                      help=f"--muon_lr values (the blocks' matrices) of the modern recipe; every pair with --modern_lr is run "
                           f"(default {' '.join(map(str, DEFAULTS['modern_muon_lr']))})")
    grid.add_argument("--modern_steps", type=int, nargs="+", default=None,
                      help="budgets of the modern runs, in steps up to --max_steps, each run's schedule ending at its own "
                           "(warmup scaled with it): "
                           "the smallest at which one finishes at or below GPT-2's final val loss is reported "
                           "(default: --max_steps and its quarter and half)")
    a("--seed", type=int, default=1337, help="the weights' seed of every run")
    a("--device", default="cpu", help="train_gpt2.py's --device for every run")
    a("--overwrite", action="store_true", help="replace the runs a previous comparison left in --out_dir")
    a("--report_only", action="store_true",
      help="train nothing: the report, results.json and compare.png again from the runs' logs in --out_dir (same flags)")
    return p


def check_args(args):
    """Fill in the defaults (--quick's or the comparison's) and validate once."""
    for k, v in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for k in ("n_layer", "n_head", "n_embd", "seq_len", "batch_size", "max_steps", "eval_every", "val_steps"):
        if getattr(args, k) < 1:
            raise UserError(f"--{k} must be >= 1, got {getattr(args, k)}")
    if args.max_steps % args.eval_every:
        raise UserError(f"--max_steps {args.max_steps} is not a multiple of --eval_every {args.eval_every}: the curves' "
                        f"points would be spaced unevenly at the end; pick --eval_every dividing --max_steps")
    if args.modern_steps is None:
        args.modern_steps = [args.max_steps // 4, args.max_steps // 2, args.max_steps]
    args.modern_steps = sorted({n for n in args.modern_steps} | {args.max_steps})
    if not 0 < args.modern_steps[0] or args.modern_steps[-1] > args.max_steps:
        raise UserError(f"--modern_steps must lie in [1, --max_steps {args.max_steps}], got "
                        f"{' '.join(map(str, args.modern_steps))}")
    short = [n for n in args.modern_steps if warmup_for(args, n) > n * 0.6]
    if short:  # the modern recipe's WSD cools down over the last 40% of its steps
        raise UserError(f"--modern_steps {short[0]} is too short for its warmup ({warmup_for(args, short[0])} steps, "
                        f"--warmup_steps scaled) and the 40% cooldown of the modern recipe's schedule")
    if len(set(args.gpt2_lr)) < 3:
        raise UserError(f"--gpt2_lr needs at least 3 different values (got {' '.join(f'{v:g}' for v in args.gpt2_lr)}): "
                        f"the baseline is GPT-2's best over a grid, so that the comparison is fair")
    for flag in ("gpt2_lr", "modern_lr", "modern_muon_lr"):
        if any(v <= 0 for v in getattr(args, flag)):
            raise UserError(f"--{flag} values must be > 0, got {' '.join(f'{v:g}' for v in getattr(args, flag))}")
    if not os.path.isdir(args.data_dir) and args.data_dir != EMBEDDED_OUT_DIR:  # train_gpt2.py makes that one
        raise UserError(f"--data_dir {args.data_dir} is not a folder of token shards; make the Linux documentation's with "
                        f"python fineweb.py --input /tmp/linuxdoc/usr/share/doc/linux-doc-6.1/Documentation --out_dir "
                        f"{args.data_dir} --val_tokens 262144 (see --help), or --data_dir data/pydoc for the embedded corpus")
    return args


def run(argv=None):
    args = check_args(get_parser().parse_args(argv))
    t0, load0 = time.time(), os.getloadavg()
    runs = [read_run(args, *spec, timing=None if args.report_only else train_one(args, *spec)) for spec in plan(args)]
    report = compare(runs)
    notes = edge_warnings(runs, {"--gpt2_lr": args.gpt2_lr, "--modern_lr": args.modern_lr, "--modern_muon_lr": args.modern_muon_lr})
    wall = time.time() - t0
    step_tokens = args.batch_size * args.seq_len
    setup = (f"{args.n_layer} layers x {args.n_embd} wide, {args.n_head} heads, context {args.seq_len}; "
             f"{args.max_steps} steps of {step_tokens:,} tokens = {args.max_steps * step_tokens:,} tokens per run; {args.data_dir}")
    results = {
        "setup": setup, "flags": {k: v for k, v in vars(args).items()}, "cpu": cpu_name(),
        "load_average": {"start": load0, "end": os.getloadavg()}, "wall_seconds": wall,
        "report": report, "notes": notes, "runs": runs,
    }
    write_atomic(os.path.join(args.out_dir, "results.json"), (json.dumps(results, indent=1) + "\n").encode())
    plot(runs, report, os.path.join(args.out_dir, "compare.png"), setup)
    print(f"\n{setup}\n{cpu_name()}, load average {load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"{wall / 60:.1f} min in all\n")
    print(table(runs, report))
    for note in notes:
        print("note:", note)
    print(f"\n{os.path.join(args.out_dir, 'results.json')}, {os.path.join(args.out_dir, 'compare.png')}")
    return results


def main(argv=None):
    return exit_on_user_error("compare_recipes.py", run, argv)


if __name__ == "__main__":
    main()
