"""The Mamba-1 selective scan behind one function, with backends registered by name.

`selective_scan` takes mamba_ssm's `selective_scan_fn` arguments and picks a backend: `reference` (pure PyTorch),
`mamba_ssm` (CUDA kernel, optional) or anything registered later with `register_scan_backend` (e.g. `triton`).
"""
from __future__ import annotations

import importlib
import logging
from typing import Callable, NamedTuple, Protocol

import torch
import torch.nn.functional as F

logger = logging.getLogger("mixmamba")


class ScanFunction(Protocol):
    def __call__(
        self,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        delta_softplus: bool,
    ) -> torch.Tensor: ...


class ScanBackend(NamedTuple):
    fn: ScanFunction
    available: Callable[[torch.Tensor], bool]


SCAN_BACKENDS: dict[str, ScanBackend] = {}
# `auto` takes the first backend in this order that is registered and available for the input's device.
AUTO_ORDER = ("triton", "mamba_ssm", "reference")
# Backends that live in their own module and register themselves when imported.
OPTIONAL_BACKEND_MODULES = {"triton": "mixmamba.scan_triton"}

_logged_choices: set[tuple[str, str, str]] = set()
_tried_modules: set[str] = set()


def register_scan_backend(name: str, fn: ScanFunction, available: Callable[[torch.Tensor], bool]) -> None:
    """Make `fn` selectable as `backend=name`; `available(u)` says whether it can run on tensors like `u`.

    `fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)` must follow `selective_scan`'s shapes and return
    (batch, dim, L) in u's dtype. Registering an existing name replaces it.
    """
    SCAN_BACKENDS[name] = ScanBackend(fn, available)


def _import_optional_backends() -> None:
    for name, module in OPTIONAL_BACKEND_MODULES.items():
        if module in _tried_modules:
            continue
        _tried_modules.add(module)
        try:
            importlib.import_module(module)
        except ImportError as error:
            logger.debug("scan backend %r not loaded: %s", name, error)


def scan_backend_names() -> list[str]:
    """Every backend name `selective_scan` accepts (`auto` plus the registered ones)."""
    _import_optional_backends()
    return ["auto", *SCAN_BACKENDS]


def resolve_scan_backend(backend: str, u: torch.Tensor) -> str:
    """The backend name that `selective_scan(..., backend=backend)` runs for tensors like `u`; logs the choice once."""
    _import_optional_backends()
    if backend == "auto":
        chosen = next(name for name in AUTO_ORDER if name in SCAN_BACKENDS and SCAN_BACKENDS[name].available(u))
    elif backend not in SCAN_BACKENDS:
        raise ValueError(f"scan backend {backend!r} is unknown; use one of {scan_backend_names()}")
    elif not SCAN_BACKENDS[backend].available(u):
        raise ValueError(
            f"scan backend {backend!r} cannot run on {u.device.type} {u.dtype} tensors; "
            "use backend='auto' or 'reference'"
        )
    else:
        chosen = backend
    key = (backend, chosen, u.device.type)
    if key not in _logged_choices:
        _logged_choices.add(key)
        logger.info("selective scan: backend=%s resolves to %r on %s", backend, chosen, u.device.type)
    return chosen


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Mamba-1's selective scan, as mamba_ssm's `selective_scan_fn` (real A, input-dependent grouped B and C).

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,   y_t = C_t . h_t + D * u_t,   out = y * silu(z)
    with delta = softplus(delta + delta_bias) when `delta_softplus`.

    Shapes: u, delta, z (batch, dim, L); A (dim, N); B, C (batch, G, N, L) where channel d uses group d // (dim / G);
    D, delta_bias (dim,). Returns (batch, dim, L) in u's dtype; the state is kept in float32 (float64 for float64
    inputs, so gradcheck works).
    """
    batch, dim, length = u.shape
    if A.shape[0] != dim or B.dim() != 4 or C.shape != B.shape or dim % B.shape[1] != 0:
        raise ValueError(
            f"selective_scan got u {tuple(u.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}; "
            "pass A (dim, N) and B, C (batch, G, N, L) with dim divisible by G"
        )
    name = resolve_scan_backend(backend, u)
    return SCAN_BACKENDS[name].fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


# On CPU the reference scan runs the batch in chunks of about this many state elements (4 MB in float32) so that
# each step's tensors stay in cache: 2.3x faster than one pass at the `moe16` benchmark size. GPUs take it at once.
CPU_CHUNK_STATE_ELEMENTS = 1 << 20


def _recurrence(
    A: torch.Tensor, delta: torch.Tensor, delta_u: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """A (G, H, N); delta, delta_u (L, b, G, H); B, C (L, b, G, 1, N) -> y (b, G, H, L)."""
    state = delta.new_zeros(*delta.shape[1:], A.shape[-1])  # (b, G, H, N)
    ys = []
    for delta_t, delta_u_t, B_t, C_t in zip(delta, delta_u, B, C):
        decay = torch.exp(delta_t[..., None] * A)  # (b, G, H, N)
        state = decay * state + delta_u_t[..., None] * B_t
        ys.append((state * C_t).sum(-1))  # (b, G, H)
    return torch.stack(ys, dim=-1)


def _reference_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    # A loop over the sequence: memory stays O(batch * dim * N) per step instead of mamba_ssm's
    # selective_scan_ref, which materialises exp(delta * A) for the whole sequence at once. Time is moved to the
    # front and unbound once, so each step reads contiguous slices and backward stacks instead of scattering.
    compute_dtype = torch.promote_types(u.dtype, torch.float32)
    batch, dim, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    per_group = dim // groups
    u_compute = u.to(compute_dtype)
    delta = delta.to(compute_dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute_dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(compute_dtype).view(groups, per_group, d_state)  # (G, H, N)
    time_major = (3, 0, 1, 2)
    delta_steps = delta.view(batch, groups, per_group, length).permute(time_major).contiguous()  # (L, b, G, H)
    delta_u_steps = delta_steps * u_compute.view(batch, groups, per_group, length).permute(time_major)
    B_steps = B.to(compute_dtype).permute(time_major).unsqueeze(3).contiguous()  # (L, b, G, 1, N)
    C_steps = C.to(compute_dtype).permute(time_major).unsqueeze(3).contiguous()  # (L, b, G, 1, N)

    rows = max(1, CPU_CHUNK_STATE_ELEMENTS // (dim * d_state)) if u.device.type == "cpu" else batch
    # split (not slicing) so that backward joins the chunks' gradients with one cat
    chunks = zip(*(t.split(rows, dim=1) for t in (delta_steps, delta_u_steps, B_steps, C_steps)))
    y = torch.cat([_recurrence(A, *chunk) for chunk in chunks]).reshape(batch, dim, length)  # (b, dim, L)
    if D is not None:
        y = y + u_compute * D.to(compute_dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute_dtype))
    return y.to(u.dtype)


register_scan_backend("reference", _reference_scan, lambda u: True)

try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_ssm_scan_fn
except ImportError:
    _mamba_ssm_scan_fn = None

if _mamba_ssm_scan_fn is not None:

    def _mamba_ssm_scan(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        delta_softplus: bool,
    ) -> torch.Tensor:
        # The CUDA kernel wants float32 A, D and delta_bias, as mamba_simple passes them.
        return _mamba_ssm_scan_fn(
            u.contiguous(),
            delta.contiguous(),
            A.float().contiguous(),
            B.contiguous(),
            C.contiguous(),
            None if D is None else D.float(),
            z=None if z is None else z.contiguous(),
            delta_bias=None if delta_bias is None else delta_bias.float(),
            delta_softplus=delta_softplus,
        )

    register_scan_backend("mamba_ssm", _mamba_ssm_scan, lambda u: u.is_cuda and u.dtype != torch.float64)
