"""What a training step must cost at least: the device's measured rates (copy bandwidth, matmul throughput), a
step's FLOPs and bytes moved, and the time those take at those rates."""
from __future__ import annotations

import statistics
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.data.protocol import WindowBatch
from benchmarks.training.config import TrainConfig


def measure_ceilings(device: torch.device) -> dict[str, float | str]:
    """Measured rates the floors use (CUDA only): device-to-device copy (bytes read + written) and 8192^3 matrix
    products in float32 and bf16."""
    copy_tb_s = _copy_tb_s(device)
    fp32, bf16 = _matmul_tflops(device, torch.float32), _matmul_tflops(device, torch.bfloat16)
    torch.cuda.empty_cache()
    return {"copy_tb_s": copy_tb_s, "matmul_tflops_fp32": fp32, "matmul_tflops_bf16": bf16,
            "fp32_matmul_precision": torch.get_float32_matmul_precision()}


def step_floor(model: nn.Module, batch: WindowBatch, train: TrainConfig, bf16: bool) -> dict[str, float]:
    """What one training step must do at least: FLOPs of its matrix products and convolutions (torch's
    FlopCounterMode, forward + backward) and bytes moved - parameters, gradients and both Adam moments read and
    written once (32 bytes per parameter), the batch read once, each tensor saved for backward written and read once.
    """
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    model.train()
    criterion = nn.MSELoss() if train.loss == "mse" else nn.L1Loss()
    device_type = next(model.parameters()).device.type
    with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            forecast, aux_loss = model(batch.x, batch.x_mark)
        (criterion(forecast.float(), batch.y) + aux_loss.float()).backward()
    model.zero_grad(set_to_none=True)
    flops = 0.0
    for operator, value in counter.get_flop_counts()["Global"].items():
        if str(operator).endswith("convolution_backward"):
            continue  # the counter ignores groups here (a depthwise conv counts as dense): taken as 2x forward below
        flops += value * (3 if str(operator).endswith("convolution") else 1)
    count = sum(p.numel() for p in model.parameters())
    batch_bytes = sum(t.numel() * t.element_size() for t in (batch.x, batch.y, batch.x_mark))
    saved_bytes = sum(saved.values())
    return {"flops": flops, "bytes": float(32 * count + batch_bytes + 2 * saved_bytes),
            "parameters": count, "saved_activation_bytes": saved_bytes}


def floor_ms(floor: dict[str, float], ceilings: dict[str, float | str], bf16: bool) -> dict[str, float] | None:
    """The compute and memory times of a floor at the measured rates, and the larger of the two; None without
    measured rates (on the CPU)."""
    if not ceilings:
        return None
    rate = float(ceilings["matmul_tflops_bf16" if bf16 else "matmul_tflops_fp32"])
    compute = floor["flops"] / rate / 1e9
    memory = floor["bytes"] / float(ceilings["copy_tb_s"]) / 1e9
    return {"compute_ms": compute, "memory_ms": memory, "floor_ms": max(compute, memory)}


def _copy_tb_s(device: torch.device) -> float:
    """Device-to-device copy rate of 1 GiB, bytes read plus written, in TB/s."""
    source = torch.randn(2**28, device=device)
    target = torch.empty_like(source)
    return 2 * 2**30 / _median_ms(lambda: target.copy_(source), 10) / 1e9


def _matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 8192) -> float:
    """Rate of a size^3 matrix product in `dtype`, in TFLOP/s."""
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / _median_ms(lambda: a @ b, 5) / 1e9


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    """Median CUDA-event time of `run` over `repeats` calls after one untimed call."""
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
