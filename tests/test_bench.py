"""bench_train.py on CPU: the device decisions with a GPU's values (device type of cuda:N, a card
missing from the peak table, devices this machine lacks), an out-of-memory batch size, one-line
user errors, and a tiny end-to-end run and profile. (tests/test_cli.py checks its --help.)"""

import json
import os
import subprocess
import sys

import pytest
import torch

import bench_train
import train_gpt2
from model import UserError

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
    peak, how = bench_train.peak_flops("cuda:0", "bfloat16", device_name="NVIDIA H100 80GB HBM3")
    assert (peak, how) == (train_gpt2.gpu_peak_flops("NVIDIA H100 80GB HBM3", "bfloat16"), "datasheet")
    assert peak is not None and bench_train.mfu_text(0.4 * peak, peak, how) == "40.0%"
    peak, how = bench_train.peak_flops("cuda:0", "bfloat16", device_name="NVIDIA Imaginary X1")
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
    monkeypatch.setattr(train_gpt2, "configure_tf32", lambda device_type: tf32.append(device_type))
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
    for r in res["rows"]:
        assert r["oom"] is None and r["step_s"] > 0 and r["peak_memory_gb"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["batch_size"] * 32 / r["step_s"])
        assert r["mfu"] == pytest.approx(r["flops_per_s"] / res["peak_flops"])
        line = next(ln for ln in out.splitlines() if ln.split()[:2] == [str(r["batch_size"]), "eager"])
        assert f"{100 * r['mfu']:.1f}%" in line and "GiB" in line


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
