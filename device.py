"""
Devices: which one a --device flag means, the peak FLOP/s that MFU is measured against, TF32, and
the autocast/loss-scaler set-up of a --dtype. Each decision takes what it depends on (a device
name, a GPU count), so that a CPU test can call it with a GPU's values.
"""

import gc
import re
import time

import torch

from common import UserError


def resolve_device(device_arg="auto", cuda_count=None, mps_available=None, local_rank=None):
    """The torch device for a --device flag: auto (cuda, then mps, then cpu), cuda, cuda:N, mps or
    cpu; a UserError naming the flag for one this machine lacks. cuda_count and mps_available are
    this machine's unless given (a test gives a GPU machine's). local_rank: under torchrun, each
    process takes the GPU of its LOCAL_RANK."""
    if cuda_count is None:
        cuda_count = torch.cuda.device_count()
    if mps_available is None:
        mps_available = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if device_arg == "auto":
        device_arg = "cuda" if cuda_count else "mps" if mps_available else "cpu"
    kind, _, index = device_arg.partition(":")
    if kind not in ("cuda", "mps", "cpu") or (index and not (kind == "cuda" and index.isdigit())):
        raise UserError(f"--device {device_arg}: expected auto, cuda, cuda:N, mps or cpu")
    if kind == "cuda":
        if cuda_count == 0:
            raise UserError(f"--device {device_arg}: this machine has no CUDA GPU (torch sees none); use --device cpu")
        if local_rank is not None:
            if index:
                raise UserError(f"--device {device_arg}: under torchrun each process takes the GPU of its LOCAL_RANK; say --device cuda")
            index = str(local_rank)  # one process per GPU
        index = int(index or 0)
        if index >= cuda_count:
            raise UserError(f"--device {device_arg}: GPU {index} does not exist, torch sees {cuda_count}"
                            + (f"; start at most {cuda_count} processes per node (--nproc_per_node)" if local_rank is not None else ""))
        return f"cuda:{index}"
    if kind == "mps":
        if not mps_available:
            raise UserError(f"--device {device_arg}: this machine has no Apple GPU (MPS); use --device cpu")
        if local_rank is not None:
            raise UserError("--device mps does not run under torchrun; use cuda (NCCL) or cpu (gloo)")
    return kind


# dense (no sparsity) tensor-core peaks from NVIDIA's datasheets, FLOP/s per GPU. "float32" is
# TF32, which training enables for float32 matmuls; None: the card has no such units. Keys are
# tokens of torch.cuda.get_device_name(), all of which must be present; the first match wins,
# so a more specific entry comes before a less specific one
GPU_PEAK_FLOPS = [
    # H100 NVL: BF16 1,671 / TF32 835 TFLOPS with sparsity
    (("H100", "NVL"), {"bfloat16": 835.5e12, "float16": 835.5e12, "float32": 417.5e12}),
    # H100 PCIe: BF16 1,513 / TF32 756 with sparsity
    (("H100", "PCIe"), {"bfloat16": 756.5e12, "float16": 756.5e12, "float32": 378e12}),
    # H100 SXM5 ("NVIDIA H100 80GB HBM3"): BF16 1,979 / TF32 989 with sparsity
    (("H100",), {"bfloat16": 989.5e12, "float16": 989.5e12, "float32": 494.5e12}),
    # H200 NVL: as H100 NVL
    (("H200", "NVL"), {"bfloat16": 835.5e12, "float16": 835.5e12, "float32": 417.5e12}),
    # H200 SXM and GH200 (an H100/H200 GPU beside a Grace CPU): as H100 SXM
    (("H200",), {"bfloat16": 989.5e12, "float16": 989.5e12, "float32": 494.5e12}),
    (("GH200",), {"bfloat16": 989.5e12, "float16": 989.5e12, "float32": 494.5e12}),
    # HGX B200: BF16 4.5 / TF32 2.2 PFLOPS with sparsity
    (("B200",), {"bfloat16": 2250e12, "float16": 2250e12, "float32": 1100e12}),
    # A100 SXM4 and PCIe: BF16 312 / TF32 156 dense
    (("A100",), {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    # A10: BF16 125 / TF32 62.5 dense (the A10G of AWS is another card, not in the table)
    (("A10",), {"bfloat16": 125e12, "float16": 125e12, "float32": 62.5e12}),
    # L40S: BF16 362 / TF32 183 dense; L40: 181 / 90.5; L4: 121 / 60
    (("L40S",), {"bfloat16": 362e12, "float16": 362e12, "float32": 183e12}),
    (("L40",), {"bfloat16": 181e12, "float16": 181e12, "float32": 90.5e12}),
    (("L4",), {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    # GeForce RTX 4090: FP16/BF16 with FP32 accumulate 165 / TF32 82.6 dense
    (("RTX", "4090"), {"bfloat16": 165e12, "float16": 165e12, "float32": 82.6e12}),
    # GeForce RTX 3090: BF16 with FP32 accumulate 71 / TF32 35.6 dense
    (("RTX", "3090"), {"bfloat16": 71e12, "float16": 71e12, "float32": 35.6e12}),
    # V100 (Volta): FP16 tensor cores only, no BF16 or TF32 units: SXM2 125 FP16, 15.7 FP32; PCIe 112, 14
    (("V100", "SXM2"), {"bfloat16": None, "float16": 125e12, "float32": 15.7e12}),
    (("V100",), {"bfloat16": None, "float16": 112e12, "float32": 14e12}),
    # T4 (Turing): FP16 tensor cores 65, FP32 8.1; no BF16 or TF32
    (("T4",), {"bfloat16": None, "float16": 65e12, "float32": 8.1e12}),
]


def gpu_peak_flops(device_name, dtype):
    """The datasheet peak of the GPU named device_name (as torch.cuda.get_device_name() says it)
    for dtype, or None for a card not in the table (MFU is then not reported). A MIG slice
    ("... MIG 3g.40gb") has g of the GPU's 7 compute slices."""
    tokens = set(re.split(r"[\s\-_]+", device_name.upper()))
    for keys, peaks in GPU_PEAK_FLOPS:
        if all(k.upper() in tokens for k in keys):
            peak = peaks[dtype]
            mig = re.search(r"\bMIG (\d)g\.", device_name)
            if peak is not None and mig:
                peak *= int(mig.group(1)) / 7
            return peak
    return None


def measure_peak_flops(device, dtype, n=4096, repeats=5, max_seconds=1.0):
    """FLOP/s of a square matmul on device, the best of a few: the practical peak of this device for
    this dtype. The side grows from 256 towards n only while one matmul stays far under max_seconds:
    a device that emulates the dtype (float16 on CPUs without fp16 units, a few GFLOP/s) would
    otherwise spend minutes on the measurement."""

    def seconds(side, times):
        a = torch.randn(side, side, device=device, dtype=getattr(torch, dtype))
        b = torch.randn(side, side, device=device, dtype=getattr(torch, dtype))
        best = float("inf")
        for _ in range(times + 1):  # the first is warm-up
            sync(device)
            t0 = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - t0)
        return best

    side = min(256, n)
    # 8x the work at twice the side, and 16x leaves room for falling out of the caches
    while side < n and 16 * seconds(side, 1) < max_seconds:
        side = min(2 * side, n)
    return 2 * side**3 / seconds(side, repeats)


def peak_flops(device, dtype, device_name=None, matmul_size=4096):
    """(peak FLOP/s of one device or None, how it was found). A GPU's is its datasheet peak, by the
    name torch reports for it (device_name; read from the device if not given), and None for a
    card the table does not know. Any other device's is measured: the best of a few square
    matmuls of side matmul_size."""
    if torch.device(device).type == "cuda":
        name = device_name or torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name, dtype)
        return peak, ("datasheet" if peak is not None else f"unknown GPU: {name}")
    return measure_peak_flops(device, dtype, n=matmul_size), "measured"


def configure_tf32(device_type):
    """TF32 tensor cores for float32 matmuls on CUDA (10 bits of mantissa, plenty for training).
    Set through the one flag that leaves both of torch's APIs readable: setting only the newer
    torch.backends.cuda.matmul.fp32_precision makes torch.get_float32_matmul_precision() and
    allow_tf32 raise ("mix of the legacy and new APIs"), which torch.compile reads in places.
    Not on CPU, where the global setting would also lower mkldnn's float32 matmuls."""
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    elif str(device).startswith("mps"):
        torch.mps.synchronize()


def autocast_and_scaler(device_type, dtype):
    """(autocast, scaler) for --dtype: autocast of the forward pass in bfloat16 or float16, or
    nothing for float32. float16 needs its loss scaled so that small gradients do not underflow;
    disabled (bfloat16, float32), the scaler passes everything through unchanged."""
    autocast = torch.autocast(device_type, dtype=getattr(torch, dtype), enabled=dtype != "float32")
    return autocast, torch.amp.GradScaler(device_type, enabled=dtype == "float16")


def find_batch_size(try_batch, max_batch_size):
    """The largest power of two up to max_batch_size for which try_batch(b) (one forward and
    backward of b sequences) does not run out of memory."""
    b = 1 << (max_batch_size.bit_length() - 1)
    while b >= 1:
        fits = True
        try:
            try_batch(b)
        except torch.OutOfMemoryError:
            fits = False
        # outside the except clause, whose traceback holds the failed try's tensors: free them
        # before the next, smaller try
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if fits:
            return b
        b //= 2
    raise UserError("--batch_size auto: even one sequence does not fit in this GPU's memory; try "
                    "--activation_checkpointing, a shorter --seq_len, or a smaller model")


def auto_batch_size(model, seq_len, max_batch_size, autocast, device):
    """--batch_size auto on this process's GPU: the largest power of two up to max_batch_size whose
    forward and backward fit. Tried eager and unsharded, before torch.compile and FSDP, which
    need less: the answer errs small, never into an out-of-memory."""
    if not device.startswith("cuda"):
        raise UserError("--batch_size auto works on CUDA GPUs only; give a number of sequences")

    def try_batch(b):
        x = torch.zeros((b, seq_len), dtype=torch.long, device=device)
        try:
            with autocast:
                loss = model(x, x)[1]
            loss.backward()
        finally:
            model.zero_grad(set_to_none=True)  # a try that failed in backward leaves no gradients

    return find_batch_size(try_batch, max_batch_size)
