"""bench_train.py on CPU: the device decisions with a GPU's values (device type of cuda:N, a card
missing from the peak table, devices this machine lacks), an out-of-memory batch size, one-line
user errors, a tiny end-to-end run and profile, and the memory estimate: its activations against
what autograd keeps for backward in a tiny GPT, one row of --memory_table against a hand
computation, FSDP's division by the world size. (tests/test_cli.py checks its --help.)"""

import json
import os
import subprocess
import sys

import pytest
import torch

import bench_train
import device
import train_args
import train_gpt2
from common import UserError
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--seq_len", "32", "--dtype", "float32",
        "--device", "cpu", "--modes", "eager", "--steps", "2", "--warmup", "1", "--peak_matmul_size", "128"]


@pytest.mark.parametrize("device_arg, cuda_count, mps, want", [
    ("cpu", 0, False, ("cpu", "cpu")),
    ("cuda", 1, False, ("cuda:0", "cuda")),
    ("cuda:0", 1, False, ("cuda:0", "cuda")),  # torch.autocast(device_type="cuda:0") would raise
    ("cuda:1", 2, False, ("cuda:1", "cuda")),
    ("mps", 0, True, ("mps", "mps")),
    ("auto", 2, True, ("cuda:0", "cuda")),
])
def test_device_and_its_type(device_arg, cuda_count, mps, want):
    assert bench_train.resolve(device_arg, cuda_count, mps) == want
    torch.autocast(device_type=want[1], enabled=False)  # a device type autocast accepts


@pytest.mark.parametrize("device_arg, cuda_count, mps", [
    ("cuda", 0, False), ("cuda:0", 0, False), ("cuda:2", 2, False), ("mps", 1, False), ("gpu", 1, True),
])
def test_a_device_this_machine_lacks_is_a_user_error_naming_the_flag(device_arg, cuda_count, mps):
    with pytest.raises(UserError, match=f"^--device {device_arg}: "):
        bench_train.resolve(device_arg, cuda_count, mps)


def test_peak_of_a_known_and_an_unknown_gpu():
    # names as torch.cuda.get_device_name() reports them; no GPU is touched when the name is given
    peak, how = device.peak_flops("cuda:0", "bfloat16", device_name="NVIDIA H100 80GB HBM3")
    assert (peak, how) == (device.gpu_peak_flops("NVIDIA H100 80GB HBM3", "bfloat16"), "datasheet")
    assert peak is not None and bench_train.mfu_text(0.4 * peak, peak, how) == "40.0%"
    peak, how = device.peak_flops("cuda:0", "bfloat16", device_name="NVIDIA Imaginary X1")
    assert peak is None and how == "unknown GPU: NVIDIA Imaginary X1"
    assert bench_train.mfu_text(1e12, peak, how) == "n/a (unknown GPU: NVIDIA Imaginary X1)"


def test_unknown_gpu_finishes_with_no_mfu(monkeypatch, capsys):
    """The GPU run used to crash after its timed steps when the card was not in the peak table:
    the same path on CPU, with the peak lookup answering as for an unknown GPU."""
    monkeypatch.setattr(bench_train, "peak_flops", lambda *a, **k: (None, "unknown GPU: NVIDIA Imaginary X1"))
    res = bench_train.main(TINY + ["--batch_size", "2"])
    out = capsys.readouterr().out
    assert "n/a (unknown GPU: NVIDIA Imaginary X1)" in out
    assert res["peak_flops"] is None and res["rows"][0]["mfu"] is None and res["rows"][0]["tokens_per_s"] > 0


def test_tiny_run_prints_and_writes_figures(tmp_path, monkeypatch, capsys):
    tf32 = []
    monkeypatch.setattr(bench_train, "configure_tf32", lambda device_type: tf32.append(device_type))
    out_json = tmp_path / "bench.json"
    res = bench_train.main(TINY + ["--batch_size", "2,4", "--out", str(out_json)])
    out = capsys.readouterr().out
    assert tf32 == ["cpu"]  # the matmul setup of training, for this device type
    assert json.loads(out_json.read_text()) == json.loads(json.dumps(res))
    assert [(r["batch_size"], r["mode"]) for r in res["rows"]] == [(2, "eager"), (4, "eager")]
    assert res["peak_how"] == "measured" and res["peak_flops"] > 0
    # GPT-2 small's FLOPs formula on the tiny model: 6 per non-wpe parameter plus attention
    n = res["model"]["params"] - 32 * 32  # wpe: block_size (= seq_len) x n_embd
    assert res["flops_per_token"] == 6 * n + 12 * 2 * 32 * 32
    config = GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)
    for r in res["rows"]:
        assert r["oom"] is None and r["step_s"] > 0 and r["peak_memory_gb"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["batch_size"] * 32 / r["step_s"])
        assert r["mfu"] == pytest.approx(r["flops_per_s"] / res["peak_flops"])
        # the paper estimate of the same step (one process, float32, no activation checkpointing)
        estimate = bench_train.memory_estimate(config, r["batch_size"], 32, "float32")
        assert r["memory_estimate_gb"] == {k: v / 2**30 for k, v in estimate.items()}
        line = next(ln for ln in out.splitlines() if ln.split()[:2] == [str(r["batch_size"]), "eager"])
        assert f"{100 * r['mfu']:.1f}%" in line
        assert line.split()[-2:] == [f"{r['peak_memory_gb']:.2f}GiB", f"{estimate['total'] / 2**30:.2f}GiB"]
    assert res["activation_checkpointing"] is False


def test_out_of_memory_batch_size_is_reported_and_the_next_still_runs(monkeypatch, capsys):
    real = bench_train.time_batch_size

    def time_batch_size(args, device_type, batch_size, modes, data_dir):
        if batch_size == 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
        return real(args, device_type, batch_size, modes, data_dir)

    monkeypatch.setattr(bench_train, "time_batch_size", time_batch_size)
    res = bench_train.main(TINY + ["--batch_size", "2,4,3"])
    out = capsys.readouterr().out
    assert [(r["batch_size"], r["oom"]) for r in res["rows"]] == [
        (2, None), (4, "CUDA out of memory. Tried to allocate 12.00 GiB"), (3, None)]
    assert "    4 eager     OOM: CUDA out of memory. Tried to allocate 12.00 GiB" in out
    assert res["rows"][2]["tokens_per_s"] > 0


def test_profile_prints_the_profiler_table(capsys):
    bench_train.main(TINY + ["--batch_size", "2", "--profile", "--profile_rows", "5"])
    out = capsys.readouterr().out
    assert "eager step, batch 2 x 32, float32 on cpu" in out
    assert "Self CPU time total" in out and "Input Shapes" in out


def test_bad_flag_values_are_user_errors():
    with pytest.raises(UserError, match=r"argument --batch_size: '16,x': expected comma-separated ints"):
        bench_train.main(["--batch_size", "16,x"])
    with pytest.raises(UserError, match=r"argument --modes: 'eager,jit': use eager, compiled"):
        bench_train.main(["--modes", "eager,jit"])
    with pytest.raises(UserError, match="--n_embd 50 is not divisible by --n_head 12"):
        bench_train.main(["--n_embd", "50", "--device", "cpu"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_flag_without_cuda_is_one_line_error():
    proc = subprocess.run([sys.executable, "bench_train.py", "--device", "cuda:0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench_train.py: error: --device cuda:0: "), lines


def test_activation_checkpointing_flag_reaches_the_model_and_the_estimate():
    args = bench_train.get_parser().parse_args(TINY + ["--batch_size", "2", "--activation_checkpointing"])
    device_type = bench_train.check_args(args)
    model = bench_train.build(args, device_type)[0]
    assert model.activation_checkpointing is True
    res = bench_train.main(TINY + ["--batch_size", "2", "--activation_checkpointing"])
    assert res["activation_checkpointing"] is True
    config = GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)
    on = bench_train.memory_estimate(config, 2, 32, "float32", activation_checkpointing=True)
    off = bench_train.memory_estimate(config, 2, 32, "float32", activation_checkpointing=False)
    assert res["rows"][0]["memory_estimate_gb"] == {k: v / 2**30 for k, v in on.items()}
    assert on["activations"] < off["activations"] and on["params"] == off["params"]


# -----------------------------------------------------------------------------
# memory on paper

GPT2_124M = GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768)


def saved_for_backward_bytes(model, batch_size, seq_len, dtype):
    """Bytes of the distinct storages that a training forward pass keeps for backward, parameters
    excepted."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    g = torch.Generator().manual_seed(batch_size)
    V = model.config.vocab_size
    x, y = torch.randint(0, V, (batch_size, seq_len), generator=g), torch.randint(0, V, (batch_size, seq_len), generator=g)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            model(x, y)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_activations_are_what_autograd_keeps_for_backward(dtype, activation_checkpointing):
    """The estimate's blocks and head, and the log-softmax of its loss term (the one loss tensor
    kept in the forward pass; the other two are backward's), against the storages autograd keeps
    for one more sequence of a tiny GPT, counted byte for byte (what is the same at any batch size,
    such as autocast's 16-bit weights, cancels). What the estimate leaves out is added here by hand."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=256, n_layer=2, n_head=2, n_embd=64)
    model = GPT(config)
    model.activation_checkpointing = activation_checkpointing
    s, L, a = 32, config.n_layer, config.n_head
    measured = saved_for_backward_bytes(model, 2, s, dtype) - saved_for_backward_bytes(model, 1, s, dtype)
    parts = bench_train.activation_parts(config, 1, s, dtype, activation_checkpointing)
    layer_norms = 1 if activation_checkpointing else 2 * L + 1  # the blocks' own are recomputed
    left_out = (layer_norms * 2 * 4 * s  # each LayerNorm's fp32 mean and reciprocal deviation per token
                + (0 if activation_checkpointing else L * a * 4 * s)  # SDPA's fp32 log-sum-exp per head
                + 2 * 8 * s)  # the int64 token ids (for wte's backward) and targets (cross-entropy's)
    assert measured == parts["blocks"] + parts["head"] + parts["loss"] // 3 + left_out


def test_one_row_by_hand():
    """GPT-2 124M, DDP on 8 GPUs, bf16, micro-batch 64, no activation checkpointing: the formula
    written out by hand."""
    h, V, L, b, s = 768, 50304, 12, 64, 1024
    N = L * (12 * h * h + 13 * h) + V * h + 1024 * h + 2 * h  # blocks, wte (= lm_head), wpe, ln_f
    assert N == 124_475_904 == bench_train.param_counts(GPT2_124M)[0]
    want = {
        "params": 4 * N + 2 * N,  # fp32 weights, autocast's bf16 copies
        "grads": 4 * N + 4 * N,  # fp32 gradients, DDP's buckets
        "optimizer": 8 * N,
        "activations": L * b * s * h * (14 * 2 + 2 * 4) + b * s * h * (4 + 2) + 12 * b * s * V,
    }
    want["total"] = sum(want.values())
    assert bench_train.memory_estimate(GPT2_124M, b, s, "bfloat16", "ddp", 8) == want
    row = next(r for r in bench_train.memory_table() if (r["preset"], r["parallel"], r["activation_checkpointing"])
               == ("gpt2-124m", "ddp", False))
    assert {k: row[k] for k in want} == want and row["batch_size"] == 64 and row["grad_accum_steps"] == 1
    # 59.9 GiB: an 80 GB card only, at 90%; the micro-batches 16 and 32 by the same formula
    assert want["total"] / 2**30 == pytest.approx(59.93, abs=0.005) and row["fits"] == [80]
    assert row["largest_batch_size"] == {24: 16, 40: 32, 80: 64}


def test_one_fsdp_row_with_activation_checkpointing_by_hand():
    """GPT-2 124M, FSDP on 8 GPUs, bf16, micro-batch 64, activation checkpointing: the formula
    written out by hand, with the two gathered blocks and the recomputed block."""
    h, V, L, b, s, W = 768, 50304, 12, 64, 1024, 8
    P = 12 * h * h + 13 * h  # one block
    N = L * P + V * h + 1024 * h + 2 * h
    root = V * h + 1024 * h + 2 * h  # wte (= lm_head), wpe, ln_f: gathered for the whole step
    want = {
        "params": 4 * N / W + 2 * (root + 2 * P),  # the fp32 shard; bf16 root and two blocks, gathered
        "grads": 4 * N / W + P * (2 + 4),  # the fp32 shard; one block's bf16 gradient and its fp32 copy
        "optimizer": 8 * N / W,
        "activations": (L * b * s * h * 4  # each block's fp32 input
                        + b * s * h * (4 + 2)  # ln_f's and lm_head's inputs
                        + 12 * b * s * V  # the loss
                        + b * s * h * (14 * 2 + 2 * 4)),  # the block that backward recomputes
    }
    want["total"] = sum(want.values())
    assert bench_train.memory_estimate(GPT2_124M, b, s, "bfloat16", "fsdp", W, activation_checkpointing=True) == want
    row = next(r for r in bench_train.memory_table() if (r["preset"], r["parallel"], r["activation_checkpointing"])
               == ("gpt2-124m", "fsdp", True))
    assert {k: row[k] for k in want} == want and row["batch_size"] == b and row["grad_accum_steps"] == 1


def test_fsdp_divides_params_grads_and_optimizer_by_the_world_size():
    N, P = bench_train.param_counts(GPT2_124M)
    est = {W: bench_train.memory_estimate(GPT2_124M, 8, 1024, "bfloat16", "fsdp", W) for W in (2, 4, 8)}
    for part, per_param in (("params", 4), ("grads", 4), ("optimizer", 8)):
        for W1, W2 in ((2, 4), (4, 8)):
            assert est[W1][part] - est[W2][part] == pytest.approx(per_param * N * (1 / W1 - 1 / W2), rel=1e-12)
    assert len({e["activations"] for e in est.values()}) == 1
    ddp = bench_train.memory_estimate(GPT2_124M, 8, 1024, "bfloat16", "ddp", 8)
    assert est[8]["optimizer"] == ddp["optimizer"] / 8 and est[8]["activations"] == ddp["activations"]
    # gradient accumulation without sync keeps the whole fp32 gradient until the last micro-step
    accum = bench_train.memory_estimate(GPT2_124M, 8, 1024, "bfloat16", "fsdp", 8, grad_accum_steps=2)
    assert accum["grads"] - est[8]["grads"] == 4 * N


def test_memory_table_prints_every_preset_and_its_totals_add_up(capsys):
    rows = bench_train.main(["--memory_table"])
    out = capsys.readouterr().out
    table = [ln for ln in out.splitlines() if ln.startswith("| gpt2-")]
    assert len(rows) == len(table) == 16
    for r, line in zip(rows, table):
        args = train_args.parse_args(["--preset", r["preset"]])
        assert r["batch_size"] == args.batch_size and r["grad_accum_steps"] == train_gpt2.grad_accum_steps_for(args, 8)
        parts = [r[k] for k in ("params", "grads", "optimizer", "activations")]
        assert r["total"] == sum(parts)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:6] == [r["preset"], f"{r['params_count'] / 1e6:,.1f}M", r["parallel"].upper(),
                             "yes" if r["activation_checkpointing"] else "no", str(args.batch_size),
                             str(r["grad_accum_steps"])]
        printed = [float(c) for c in cells[6:10]]
        assert float(cells[10].strip("*")) == pytest.approx(sum(printed), abs=0.02)  # rounding only
        assert cells[11] == (", ".join(map(str, r["fits"])) or "none")
        for card in r["fits"]:  # a card that fits the preset's micro-batch fits at least that one
            assert r["largest_batch_size"][card] >= r["batch_size"]
    # the presets' shapes, 124M to 1558M, each with DDP and FSDP, without and with checkpointing
    assert [(r["preset"], r["parallel"], r["activation_checkpointing"]) for r in rows[:4]] == [
        ("gpt2-124m", "ddp", False), ("gpt2-124m", "ddp", True), ("gpt2-124m", "fsdp", False), ("gpt2-124m", "fsdp", True)]
    assert [r["params_count"] for r in rows[::4]] == [124_475_904, 354_871_296, 774_090_240, 1_557_686_400]
    for off, on in zip(rows[::2], rows[1::2]):
        assert on["activations"] < off["activations"]
        assert {k: on[k] for k in ("params", "grads", "optimizer")} == {k: off[k] for k in ("params", "grads", "optimizer")}


def test_out_is_written_after_every_batch_size(tmp_path, monkeypatch):
    """A run killed in its second batch size (the GPU check's timeout) leaves the first in --out."""
    real = bench_train.time_batch_size

    def time_batch_size(args, device_type, batch_size, modes, data_dir):
        if batch_size == 4:
            raise KeyboardInterrupt  # as a kill would, in the middle of compiling
        return real(args, device_type, batch_size, modes, data_dir)

    monkeypatch.setattr(bench_train, "time_batch_size", time_batch_size)
    out_json = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        bench_train.main(TINY + ["--batch_size", "2,4", "--out", str(out_json)])
    res = json.loads(out_json.read_text())
    assert res["finished"] is False and [(r["batch_size"], r["mode"]) for r in res["rows"]] == [(2, "eager")]
    assert res["rows"][0]["tokens_per_s"] > 0 and res["rows"][0]["memory_estimate_gb"]["total"] > 0
    assert sorted(os.listdir(tmp_path)) == ["bench.json"]  # no temporary file left behind
