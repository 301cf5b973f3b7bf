"""The selective scan against the Mamba-1 recurrence written out in float64, its gradients, and backend choice."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import mixmamba.scan
from mixmamba.scan import SCAN_BACKENDS, register_scan_backend, resolve_scan_backend, selective_scan


def recurrence_float64(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """h_t = exp(dt A) h_{t-1} + dt B_t u_t; y_t = <C_t, h_t> + D u_t; y *= silu(z); one channel at a time."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    channels_per_group = dim // B.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    out = torch.zeros(batch, dim, length, dtype=torch.float64)
    for b in range(batch):
        for d in range(dim):
            g = d // channels_per_group
            h = torch.zeros(A.shape[1], dtype=torch.float64)
            for t in range(length):
                h = torch.exp(delta[b, d, t] * A[d]) * h + delta[b, d, t] * B[b, g, :, t] * u[b, d, t]
                y = (C[b, g, :, t] * h).sum()
                if D is not None:
                    y = y + D[d].double() * u[b, d, t]
                if z is not None:
                    y = y * F.silu(z[b, d, t].double())
                out[b, d, t] = y
    return out


def scan_inputs(length, d_state, dtype=torch.float64, batch=2, dim=4, groups=2, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    return dict(
        u=randn(batch, dim, length),
        delta=randn(batch, dim, length) * 0.5,
        A=-torch.exp(randn(dim, d_state) * 0.5),
        B=randn(batch, groups, d_state, length),
        C=randn(batch, groups, d_state, length),
        D=randn(dim),
        z=randn(batch, dim, length),
        delta_bias=randn(dim) * 0.5,
    )


@pytest.mark.parametrize("length", [1, 2, 3, 7, 16, 33, 64, 128])
@pytest.mark.parametrize("d_state", [8, 16])
@pytest.mark.parametrize("with_extras", [True, False], ids=["z-D-bias", "plain"])
def test_reference_scan_matches_the_float64_recurrence(length, d_state, with_extras):
    inputs = scan_inputs(length, d_state)
    if not with_extras:
        inputs.update(D=None, z=None, delta_bias=None)
    expected = recurrence_float64(**inputs)
    out = selective_scan(**inputs, backend="reference")
    assert out.shape == (2, 4, length) and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length", [1, 16, 128])
def test_float32_inputs_come_back_float32_and_close(length):
    inputs = scan_inputs(length, 16, dtype=torch.float32)
    out = selective_scan(**inputs, backend="reference")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), recurrence_float64(**inputs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows_per_chunk", [1, 2, 5])
def test_cpu_batch_chunks_give_the_same_values_and_gradients(monkeypatch, rows_per_chunk):
    inputs = scan_inputs(9, 8, batch=5)
    whole = {name: t.clone().requires_grad_(True) for name, t in inputs.items()}
    out_whole = selective_scan(**whole, backend="reference")
    out_whole.square().sum().backward()
    monkeypatch.setattr(mixmamba.scan, "CPU_CHUNK_STATE_ELEMENTS", rows_per_chunk * 4 * 8)  # rows * dim * N
    chunked = {name: t.clone().requires_grad_(True) for name, t in inputs.items()}
    out_chunked = selective_scan(**chunked, backend="reference")
    out_chunked.square().sum().backward()
    torch.testing.assert_close(out_chunked, recurrence_float64(**inputs), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_chunked, out_whole, rtol=1e-12, atol=1e-12)
    for name in inputs:
        torch.testing.assert_close(chunked[name].grad, whole[name].grad, rtol=1e-12, atol=1e-12)


def test_without_softplus_delta_is_used_as_given():
    inputs = scan_inputs(5, 8)
    inputs["delta"] = inputs["delta"].abs()
    out = selective_scan(**inputs, delta_softplus=False, backend="reference")
    torch.testing.assert_close(out, recurrence_float64(**inputs, delta_softplus=False), rtol=1e-10, atol=1e-10)


def test_groups_give_each_channel_block_its_own_B_and_C():
    # One group per channel pair: changing group 1's B must leave group 0's channels untouched.
    inputs = scan_inputs(6, 8, groups=2)
    before = selective_scan(**inputs, backend="reference")
    inputs["B"][:, 1] += 1.0
    after = selective_scan(**inputs, backend="reference")
    assert torch.equal(before[:, :2], after[:, :2])
    assert not torch.allclose(before[:, 2:], after[:, 2:])


def test_gradcheck_float64():
    inputs = scan_inputs(5, 3, dim=4, groups=2, batch=1)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    tensors = tuple(inputs[name].clone().requires_grad_(True) for name in names)

    def scan(*args):
        return selective_scan(*args, delta_softplus=True, backend="reference")

    assert torch.autograd.gradcheck(scan, tensors, eps=1e-6, atol=1e-7)


def test_bad_shapes_raise_with_the_fix():
    inputs = scan_inputs(4, 8, dim=4, groups=3)
    with pytest.raises(ValueError, match="dim divisible by G"):
        selective_scan(**inputs)


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="reference"):
        selective_scan(**scan_inputs(3, 8), backend="no-such-backend")


def test_mamba_ssm_backend_is_never_chosen_for_cpu_tensors():
    u = torch.zeros(1, 2, 3)
    assert resolve_scan_backend("auto", u) != "mamba_ssm"
    if "mamba_ssm" in SCAN_BACKENDS:
        assert not SCAN_BACKENDS["mamba_ssm"].available(u)


def test_registered_backend_runs_and_its_choice_is_logged_once(caplog):
    calls = []

    def float64_backend(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        calls.append(u.shape)
        return recurrence_float64(u, delta, A, B, C, D, z, delta_bias, delta_softplus).to(u.dtype)

    register_scan_backend("test_float64", float64_backend, lambda u: u.dtype == torch.float64)
    try:
        inputs = scan_inputs(4, 8)
        with caplog.at_level(logging.INFO, logger="mixmamba"):
            first = selective_scan(**inputs, backend="test_float64")
            selective_scan(**inputs, backend="test_float64")
        assert calls == [(2, 4, 4), (2, 4, 4)]
        torch.testing.assert_close(first, selective_scan(**inputs, backend="reference"), rtol=1e-10, atol=1e-10)
        assert sum("test_float64" in record.getMessage() for record in caplog.records) == 1
        with pytest.raises(ValueError, match="cannot run"):
            selective_scan(**scan_inputs(4, 8, dtype=torch.float32), backend="test_float64")
    finally:
        SCAN_BACKENDS.pop("test_float64")
