"""The Triton scan backend against a float64 recurrence and the reference backend, under Triton's CPU interpreter.

TRITON_INTERPRET has to be set before Triton decorates the kernels, and another test may import
mixmamba.scan_triton first, so the kernels run in one child process started with it set; the tests read its numbers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[2]

# name -> (batch, groups, channels per group, dstate, L, activation dtype, D/z/delta_bias given, softplus, block_d).
# block_d None runs the custom op (default tiling, autograd); an int runs the launchers with that tiling.
# Odd sizes leave masked lanes in both tile dims; block_d=2 splits a group over two programs (their atomics meet).
CASES = {
    "fp32-all-inputs": (2, 2, 3, 5, 6, "float32", True, True, None),
    "fp32-bare": (1, 1, 4, 4, 3, "float32", False, False, None),
    "fp32-split-group": (1, 2, 3, 4, 4, "float32", True, True, 2),
    "bf16-all-inputs": (1, 2, 3, 5, 4, "bfloat16", True, True, None),
}
GRADIENTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def float64_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """h_t = exp(dt A) h_{t-1} + dt u_t B_t; y_t = <C_t, h_t> + D u_t; out = y silu(z); all in float64."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    channels_per_group = u.shape[1] // B.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B = B.repeat_interleave(channels_per_group, dim=1)  # (batch, dim, N, L)
    C = C.repeat_interleave(channels_per_group, dim=1)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (batch, dim, N)
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[..., t, None] * A) * h + (delta[..., t] * u[..., t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)  # (batch, dim, L)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * F.silu(z.double())
    return y


def scan_inputs(batch, groups, per_group, dstate, length, dtype, extras, seed=0) -> dict:
    """Random inputs as the model makes them: float32 parameters, activations in `dtype`, dt_bias-like steps."""
    generator = torch.Generator().manual_seed(seed)
    dim = groups * per_group

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    inputs = dict(
        u=randn(batch, dim, length).to(dtype),
        delta=(randn(batch, dim, length) * 0.5).to(dtype),
        A=-torch.exp(randn(dim, dstate) * 0.5),
        B=randn(batch, groups, dstate, length).to(dtype),
        C=randn(batch, groups, dstate, length).to(dtype),
        D=randn(dim) if extras else None,
        z=randn(batch, dim, length).to(dtype) if extras else None,
        # inverse softplus of steps in [0.001, 0.1], as Mamba's dt_proj bias starts
        delta_bias=(torch.rand(dim, generator=generator) * 0.099 + 0.001).expm1().log() if extras else None,
    )
    return inputs


def relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    return ((value.double() - expected.double()).norm() / expected.double().norm()).item()


def gradients(fn, inputs: dict, grad_out: torch.Tensor, softplus: bool) -> dict:
    """Output and input gradients of fn(**inputs) for the upstream gradient grad_out, by name."""
    leaves = {name: t.detach().requires_grad_() for name, t in inputs.items() if t is not None}
    out = fn(**{**inputs, **leaves}, delta_softplus=softplus)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out.to(out.dtype))
    return {"out": out.detach(), **{f"d{name}": g for name, g in zip(leaves, grads)}}


def interpreted_measurements() -> dict:
    """Run in the child process: every case's relative errors, the compile check and the backend registration."""
    from mixmamba.scan import _reference_scan, resolve_scan_backend, scan_backend_names
    from mixmamba.scan_triton import LaunchConfig, selective_scan_triton, triton_scan_backward, triton_scan_forward

    results = {}
    for name, (batch, groups, per_group, dstate, length, dtype, extras, softplus, block_d) in CASES.items():
        inputs = scan_inputs(batch, groups, per_group, dstate, length, getattr(torch, dtype), extras)
        grad_out = torch.randn(batch, groups * per_group, length, generator=torch.Generator().manual_seed(1))
        exact = gradients(float64_scan, {k: None if v is None else v.double() for k, v in inputs.items()},
                          grad_out.double(), softplus)
        reference = gradients(_reference_scan, inputs, grad_out, softplus)
        if block_d is None:
            triton = gradients(selective_scan_triton, inputs, grad_out, softplus)
        else:
            config = LaunchConfig(block_d=block_d)
            args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
            out = triton_scan_forward(*args, softplus, config)
            grads = triton_scan_backward(grad_out.to(out.dtype), *args, softplus, config)
            triton = {"out": out, **{f"d{k}": g for k, g in zip(GRADIENTS, grads) if g is not None}}
        results[name] = {
            key: {
                "float64": relative_error(triton[key], exact[key]),
                "reference": relative_error(triton[key], reference[key]),
                "reference_vs_float64": relative_error(reference[key], exact[key]),
                "dtype": str(triton[key].dtype).removeprefix("torch."),
                "shape": list(triton[key].shape),
            }
            for key in exact
        }

    # torch.compile must trace the custom op and its backward without a graph break.
    inputs = scan_inputs(1, 2, 2, 3, 3, torch.float32, True)
    grad_out = torch.randn_like(inputs["u"])

    def scaled_scan(**kwargs):
        return selective_scan_triton(**kwargs) * 2.0

    compiled = torch.compile(scaled_scan, fullgraph=True, backend="aot_eager")
    eager = gradients(scaled_scan, inputs, grad_out, True)
    traced = gradients(compiled, inputs, grad_out, True)
    results["compile"] = {key: relative_error(traced[key], eager[key]) for key in eager}

    cpu = torch.zeros(1)
    results["backends"] = {
        "names": scan_backend_names(),
        "auto_on_cpu": resolve_scan_backend("auto", cpu),
    }
    return results


@pytest.fixture(scope="module")
def measured() -> dict:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.run(
        [sys.executable, __file__], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, f"interpreted scan checks failed:\n{child.stderr[-4000:]}"
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", [name for name in CASES if name.startswith("fp32")])
def test_float32_outputs_and_every_gradient_match_float64_and_reference(measured, case):
    errors = measured[case]
    extras = CASES[case][6]
    expected = {"out", "du", "ddelta", "dA", "dB", "dC"} | ({"dD", "dz", "ddelta_bias"} if extras else set())
    assert set(errors) == expected
    for key, error in errors.items():
        # float32 state on both sides: far under 1e-3; NaN fails every comparison.
        assert error["float64"] <= 1e-5, (case, key, error)
        assert error["reference"] <= 1e-5, (case, key, error)
        assert error["dtype"] == "float32"


def test_bfloat16_inputs_give_bfloat16_outputs_and_gradients_near_float64(measured):
    errors = measured["bf16-all-inputs"]
    for key in ("out", "du", "ddelta", "dB", "dC", "dz"):
        assert errors[key]["dtype"] == "bfloat16", key
    for key in ("dA", "dD", "ddelta_bias"):  # float32 parameters get float32 gradients
        assert errors[key]["dtype"] == "float32", key
    for key, error in errors.items():
        # The float32 state leaves only the bf16 rounding of results: at most 2^-8 relative, since Triton's
        # interpreter truncates float32 -> bf16 where the GPU rounds to nearest (benchmarks/speed/scan_bench.py checks that).
        assert error["float64"] <= 8e-3, (key, error)


def test_gradient_shapes_match_their_inputs(measured):
    batch, groups, per_group, dstate, length = CASES["fp32-all-inputs"][:5]
    dim = groups * per_group
    shapes = {key: error["shape"] for key, error in measured["fp32-all-inputs"].items()}
    assert shapes == {
        "out": [batch, dim, length], "du": [batch, dim, length], "ddelta": [batch, dim, length],
        "dA": [dim, dstate], "dB": [batch, groups, dstate, length], "dC": [batch, groups, dstate, length],
        "dD": [dim], "dz": [batch, dim, length], "ddelta_bias": [dim],
    }


def test_torch_compile_traces_forward_and_backward_without_graph_breaks(measured):
    errors = measured["compile"]
    assert set(errors) == {"out", *(f"d{name}" for name in GRADIENTS)}
    assert all(error <= 1e-6 for error in errors.values()), errors


def test_triton_registers_as_a_backend_and_auto_keeps_cpu_on_reference(measured):
    assert "triton" in measured["backends"]["names"]
    assert measured["backends"]["auto_on_cpu"] == "reference"


def test_rejects_inputs_it_cannot_scan():
    pytest.importorskip("triton")
    from mixmamba.scan_triton import selective_scan_triton

    inputs = scan_inputs(1, 2, 3, 4, 5, torch.float32, False)
    with pytest.raises(ValueError, match="groups"):
        selective_scan_triton(**{**inputs, "B": inputs["B"][:, :1].expand(1, 1, 4, 5).contiguous()})
    with pytest.raises(ValueError, match="dstate"):
        selective_scan_triton(**{**inputs, "A": torch.zeros(6, 300)})
    with pytest.raises(ValueError, match="delta"):
        selective_scan_triton(**{**inputs, "delta": inputs["delta"][..., :4]})


if __name__ == "__main__":
    print(json.dumps(interpreted_measurements()))
