"""mamba_ssm's CUDA kernels against ours, and how the `auto` scan backend chooses between mamba_ssm and triton.

The GPU tests need a CUDA GPU and mamba_ssm (built by cluster/build-mamba-kernels.sh); they are skipped otherwise,
and the fused-path cases also need causal_conv1d. Errors are relative Frobenius norms, with the tolerances of
benchmarks/speed/kernel_parity.py (whose JSON, benchmarks/results/kernel_parity_h200.json, has the measured values):
- scan, against the float64 recurrence of the same inputs: float32 <= 1e-4, bf16 <= 1e-2 (output and 8 gradients);
- a real mamba_ssm Mamba per expert loaded into MambaExperts: float32 <= 1e-4, bf16 autocast <= 5e-2 (output, input
  gradient and every parameter gradient).
The two CPU tests check `auto`'s measurement with stand-in backends (no GPU, no mamba_ssm).
"""
from __future__ import annotations

import logging
import time

import pytest
import torch

import mixmamba.scan as scan
from mixmamba.scan import ScanBackend, auto_scan_choices, selective_scan

try:
    import mamba_ssm  # noqa: F401
    from benchmarks.speed import kernel_parity

    HAS_MAMBA_SSM = True
except Exception:  # noqa: BLE001 - not installed, or installed without its CUDA extension
    HAS_MAMBA_SSM = False
try:
    import causal_conv1d  # noqa: F401

    HAS_CAUSAL_CONV1D = True
except Exception:  # noqa: BLE001
    HAS_CAUSAL_CONV1D = False

gpu = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_MAMBA_SSM), reason="needs a CUDA GPU and mamba_ssm")


def _shapes() -> list:
    return kernel_parity.recipe_scan_shapes() if HAS_MAMBA_SSM else []


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", _shapes(), ids=lambda shape: shape.name)
def test_mamba_ssm_and_triton_scans_match_float64_at_every_recipe_shape(shape, dtype):
    result = kernel_parity.scan_parity(shape, dtype, ["mamba_ssm", "triton"])
    for backend in ("mamba_ssm", "triton"):
        errors = result[backend]["errors_vs_float64"]
        assert result[backend]["all_finite"], backend
        assert max(errors.values()) <= kernel_parity.SCAN_TOLERANCE[dtype], (backend, errors)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("backend", ["mamba_ssm", "triton", "reference"])
@pytest.mark.parametrize("mode", kernel_parity.BLOCK_MODES if HAS_MAMBA_SSM else ["none"])
def test_real_mamba_blocks_loaded_into_our_experts_give_the_same_outputs_and_gradients(mode, backend, dtype):
    if mode != "no_causal_conv1d" and not HAS_CAUSAL_CONV1D:
        pytest.skip("causal_conv1d is not installed")
    result = kernel_parity.block_parity(experts=2, d_model=64, d_state=8, batch=224, length=8, mode=mode,
                                        our_backend=backend, dtype_name=dtype)
    assert result["all_finite"]
    assert result["worst"] <= kernel_parity.BLOCK_TOLERANCE[dtype], result["errors"]


@gpu
def test_auto_times_mamba_ssm_and_triton_and_keeps_the_faster(monkeypatch, caplog):
    monkeypatch.setattr(scan, "_auto_choices", {})
    monkeypatch.delenv(scan.AUTO_ENV, raising=False)
    shape = _shapes()[0]
    inputs = {name: t.requires_grad_() for name, t in kernel_parity.scan_inputs(shape, torch.float32).items()}
    with caplog.at_level(logging.INFO, logger="mixmamba"):
        out = selective_scan(**inputs, backend="auto")
        out.sum().backward()
        selective_scan(**inputs, backend="auto").sum().backward()
    choices = auto_scan_choices()
    assert len(choices) == 1  # measured once per shape, then remembered
    choice = choices[0]
    assert set(choice.median_ms) == {"mamba_ssm", "triton"}
    assert choice.backend == min(choice.median_ms, key=choice.median_ms.get)
    assert sum("auto chose" in record.getMessage() for record in caplog.records) == 1
    assert scan.resolve_scan_backend("auto", inputs["u"]) == choice.backend


# ------------------------------------------------------------------------------------- CPU: auto's measurement


def _stand_in_backends(monkeypatch, slow: str) -> list[str]:
    """Registers stand-ins for mamba_ssm and triton that run on the CPU; `slow` sleeps 5 ms a call."""
    scan.scan_backend_names()  # import the optional backends first, so they do not replace the stand-ins later
    calls: list[str] = []

    def backend(name: str):
        def run(*args):
            calls.append(name)
            if name == slow:
                time.sleep(0.005)
            return scan._reference_scan(*args)
        return run

    for name in scan.AUTO_MEASURED:
        monkeypatch.setitem(scan.SCAN_BACKENDS, name, ScanBackend(backend(name), lambda u: True))
    monkeypatch.setattr(scan, "_auto_choices", {})
    monkeypatch.delenv(scan.AUTO_ENV, raising=False)
    return calls


def _cpu_inputs(batch: int = 2, length: int = 5) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator)

    return dict(u=randn(batch, 4, length), delta=randn(batch, 4, length), A=-torch.rand(4, 3, generator=generator),
                B=randn(batch, 2, 3, length), C=randn(batch, 2, 3, length))


@pytest.mark.parametrize("slow", ["mamba_ssm", "triton"])
def test_auto_keeps_the_faster_backend_per_shape_and_leaves_the_random_state_alone(monkeypatch, slow):
    calls = _stand_in_backends(monkeypatch, slow)
    fast = next(name for name in scan.AUTO_MEASURED if name != slow)
    inputs = _cpu_inputs()
    state = torch.get_rng_state()
    out = selective_scan(**inputs, backend="auto")
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(out, selective_scan(**inputs, backend="reference"), rtol=0, atol=0)
    (choice,) = auto_scan_choices()
    assert choice.backend == fast and choice.median_ms[slow] > choice.median_ms[fast]
    assert "fwd" in choice.shape and "fwd+bwd" not in choice.shape  # no gradients wanted: forward timed alone
    calls.clear()
    selective_scan(**inputs, backend="auto")
    assert calls == [fast]  # remembered: no second measurement
    selective_scan(**_cpu_inputs(length=7), backend="auto")
    assert len(auto_scan_choices()) == 2  # a new shape is measured on its own


def test_auto_uses_the_fixed_order_when_told_to(monkeypatch):
    calls = _stand_in_backends(monkeypatch, "triton")
    monkeypatch.setenv(scan.AUTO_ENV, "order")
    selective_scan(**_cpu_inputs(), backend="auto")
    assert calls == [scan.AUTO_ORDER[0]] and auto_scan_choices() == []
