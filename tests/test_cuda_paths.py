"""The decisions taken only on GPUs, called with a GPU's values on CPU: the peak FLOPs of a device
name, the TF32 setup, which device a process gets (model.resolve_device, for every script), the
micro-batch that fits (down to one sequence), and the peak a multi-GPU run's MFU is measured against."""

import pytest
import torch

import train_gpt2
import device
from common import UserError
from device import resolve_device

# real torch.cuda.get_device_name() strings, and the dense datasheet peak each must get
NAMES = [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.5e12),  # SXM5
    ("NVIDIA H100 80GB HBM3", "float32", 494.5e12),  # TF32
    ("NVIDIA H100 PCIe", "bfloat16", 756.5e12),
    ("NVIDIA H100 NVL", "bfloat16", 835.5e12),
    ("NVIDIA H200", "bfloat16", 989.5e12),
    ("NVIDIA H200 NVL", "bfloat16", 835.5e12),
    ("NVIDIA GH200 480GB", "bfloat16", 989.5e12),
    ("NVIDIA B200", "bfloat16", 2250e12),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
    ("NVIDIA A100-SXM4-40GB", "float32", 156e12),
    ("NVIDIA A100-PCIE-40GB", "bfloat16", 312e12),
    ("NVIDIA A100 80GB PCIe", "bfloat16", 312e12),
    ("NVIDIA A10", "bfloat16", 125e12),
    ("NVIDIA L4", "bfloat16", 121e12),
    ("NVIDIA L40", "bfloat16", 181e12),  # not L4's figure: tokens match exactly
    ("NVIDIA L40S", "bfloat16", 362e12),
    ("NVIDIA GeForce RTX 4090", "bfloat16", 165e12),
    ("NVIDIA GeForce RTX 3090", "bfloat16", 71e12),
    ("Tesla V100-SXM2-16GB", "float16", 125e12),
    ("Tesla V100-PCIE-32GB", "float16", 112e12),
    ("Tesla V100-SXM2-16GB", "bfloat16", None),  # Volta has no bf16 tensor cores
    ("Tesla T4", "float16", 65e12),
    ("Tesla T4", "bfloat16", None),
    # MIG slices: g of the GPU's 7 compute slices
    ("NVIDIA A100-SXM4-40GB MIG 3g.20gb", "bfloat16", 312e12 * 3 / 7),
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "bfloat16", 989.5e12 / 7),
    # not in the table: no MFU rather than a wrong one
    ("NVIDIA A10G", "bfloat16", None),
    ("NVIDIA RTX A6000", "bfloat16", None),
    ("NVIDIA H800", "bfloat16", None),
    ("NVIDIA GeForce RTX 4080", "bfloat16", None),
    ("AMD Instinct MI300X", "bfloat16", None),
]


@pytest.mark.parametrize("name, dtype, peak", NAMES)
def test_gpu_peak_flops(name, dtype, peak):
    got = device.gpu_peak_flops(name, dtype)
    assert got == (pytest.approx(peak) if peak is not None else None)


@pytest.fixture
def restore_matmul_flags():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved[0]
    torch.set_float32_matmul_precision(saved[1])


def test_tf32_setup_leaves_torch_readable(restore_matmul_flags):
    """After the lines the CUDA branch runs, both of torch's APIs read without the 'mix of the
    legacy and new APIs' error that torch.compile would meet, and say TF32."""
    mkldnn = torch.backends.mkldnn.matmul.fp32_precision
    device.configure_tf32("cuda")
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.mkldnn.matmul.fp32_precision == mkldnn  # CPU matmuls untouched


def test_tf32_setup_does_nothing_on_cpu(restore_matmul_flags):
    before = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    device.configure_tf32("cpu")
    assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32) == before


@pytest.mark.parametrize("arg, ddp, local_rank, cuda_count, mps, expected", [
    ("auto", False, 0, 8, False, "cuda:0"),
    ("auto", True, 5, 8, False, "cuda:5"),  # torchrun: the GPU of LOCAL_RANK
    ("cuda", True, 3, 8, False, "cuda:3"),
    ("cuda:1", False, 0, 2, False, "cuda:1"),
    ("auto", False, 0, 0, True, "mps"),
    ("auto", False, 0, 0, False, "cpu"),
    ("cpu", True, 1, 8, False, "cpu"),
])
def test_resolve_device(arg, ddp, local_rank, cuda_count, mps, expected):
    assert resolve_device(arg, cuda_count, mps, local_rank if ddp else None) == expected


@pytest.mark.parametrize("arg, ddp, local_rank, cuda_count, mps, message", [
    ("cuda", False, 0, 0, False, "--device cuda: this machine has no CUDA GPU"),
    ("cuda:2", False, 0, 2, False, "GPU 2 does not exist, torch sees 2"),
    ("gpu", False, 0, 1, True, "--device gpu: expected auto, cuda, cuda:N, mps or cpu"),
    ("meta", False, 0, 1, True, "--device meta: expected auto, cuda, cuda:N, mps or cpu"),
    ("mps:0", False, 0, 0, True, "--device mps:0: expected auto"),
    ("cuda", True, 4, 4, False, "GPU 4 does not exist, torch sees 4; start at most 4 processes"),
    ("cuda:0", True, 0, 8, False, "under torchrun each process takes the GPU of its LOCAL_RANK"),
    ("mps", False, 0, 0, False, "--device mps: this machine has no Apple GPU"),
    ("mps", True, 0, 0, True, "--device mps does not run under torchrun"),
    ("tpu", False, 0, 0, False, "--device tpu: expected auto, cuda, cuda:N, mps or cpu"),
])
def test_resolve_device_refuses(arg, ddp, local_rank, cuda_count, mps, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        resolve_device(arg, cuda_count, mps, local_rank if ddp else None)


def test_find_batch_size_halves_until_it_fits():
    tried = []

    def try_batch(b):  # a stand-in GPU that holds at most 24 sequences
        tried.append(b)
        if b > 24:
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert device.find_batch_size(try_batch, 64) == 16
    assert tried == [64, 32, 16]
    assert device.find_batch_size(lambda b: None, 48) == 32  # a power of two, at most the recipe's


def test_find_batch_size_when_nothing_fits():
    def try_batch(b):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(UserError, match="even one sequence does not fit"):
        device.find_batch_size(try_batch, 8)


def test_batch_size_auto_is_refused_on_cpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_gpt2.main(["--preset", "cpu", "--batch_size", "auto", "--log_dir", str(tmp_path)])
    assert e.value.code == 2 and "--batch_size auto works on CUDA GPUs only" in capsys.readouterr().err


def test_find_batch_size_tries_one_sequence():
    tried = []

    def try_batch(b):  # a stand-in GPU that holds one sequence
        tried.append(b)
        if b > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert device.find_batch_size(try_batch, 8) == 1
    assert tried == [8, 4, 2, 1]


@pytest.mark.parametrize("world_size", [1, 8])
def test_mfu_peak_of_a_gpu_run_is_the_peak_of_all_its_gpus(monkeypatch, world_size):
    """Tokens per second are the whole run's, so the peak they are measured against is every GPU's:
    the datasheet peak times the world size (no collective: every rank reads its own GPU's name)."""
    import parallel

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    d = parallel.Dist(ddp=world_size > 1, rank=0, world_size=world_size, device="cuda:0")
    assert parallel.run_peak_flops(d, "bfloat16") == pytest.approx(world_size * 989.5e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Imaginary X1")
    assert parallel.run_peak_flops(d, "bfloat16") is None
