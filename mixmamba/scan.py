"""The Mamba-1 selective scan behind one function, with backends registered by name.

`selective_scan` takes mamba_ssm's `selective_scan_fn` arguments and picks a backend: `reference` (pure PyTorch),
`mamba_ssm` (CUDA kernel, optional) or anything registered later with `register_scan_backend` (e.g. `triton`).

`auto` picks by measurement where there is a choice: when `mamba_ssm` and `triton` can both run the input, the first
call at each problem shape times both on copies of the call's own tensors, keeps the faster for that shape for the
rest of the process, and logs which it chose and why (`auto_scan_choices()` lists every decision). What is timed
follows how the engine runs the call: a call that wants gradients (training) is timed forward + backward in GPU time
alone, because the training step replays as one CUDA graph, where the host's launch cost is gone; a forward-only
call (evaluation, which runs eagerly) is timed from the host, launch cost included. Otherwise `auto` takes the first
available backend in AUTO_ORDER, as before. Set MIXMAMBA_SCAN_AUTO=order to skip the measurement.
"""
from __future__ import annotations

import importlib
import logging
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
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
# `auto` takes the first backend in this order that is registered and available for the input's device, unless
# it can measure (below).
AUTO_ORDER = ("triton", "mamba_ssm", "reference")
# When two or more of these can run the input, `auto` times them at the call's shape and keeps the fastest.
AUTO_MEASURED = ("mamba_ssm", "triton")
AUTO_WARMUP = 3  # untimed calls per candidate first (Triton compiles its kernels on the first)
AUTO_REPEATS = 15  # timed calls per candidate, interleaved; the median decides
AUTO_ENV = "MIXMAMBA_SCAN_AUTO"  # "order" turns the measurement off
# GPU-time measurement: a spin kernel of this many clock cycles (about 2.5 ms at 2 GHz) runs before each timed call,
# so that the host has issued the whole call before the GPU reaches it and the events see no launch gaps.
AUTO_PREFILL_CYCLES = 5_000_000
# Backends that live in their own module and register themselves when imported.
OPTIONAL_BACKEND_MODULES = {"triton": "mixmamba.scan_triton"}

_logged_choices: set[tuple[str, str, str]] = set()
_tried_modules: set[str] = set()


@dataclass(frozen=True)
class AutoChoice:
    """One decision of `auto`: the backend it runs for a problem shape, and the times it chose by.

    shape: "u (batch, dim, L) B (batch, G, N, L) dtype, fwd" or "..., fwd+bwd", with "+D", "+z", "+bias" flags.
    median_ms: per candidate backend, the median milliseconds of one call (forward, or forward and backward);
      empty when nothing was measured. errors: candidates that failed at this shape, with the first error line.
    """

    backend: str
    shape: str
    median_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


_auto_choices: dict[tuple, AutoChoice] = {}
_auto_lock = threading.Lock()


def auto_scan_choices() -> list[AutoChoice]:
    """Every measured choice `auto` made in this process, in the order it made them."""
    with _auto_lock:
        return list(_auto_choices.values())


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


def resolve_scan_backend(backend: str, u: torch.Tensor, scan_args: tuple | None = None) -> str:
    """The backend name that `selective_scan(..., backend=backend)` runs for tensors like `u`; logs the choice once.

    scan_args: the full call (u, delta, A, B, C, D, z, delta_bias, delta_softplus). Only with it can `auto` measure
    (see the module docstring); without it `auto` names AUTO_ORDER's pick, or the measured choice already made for
    this `u` shape if there is exactly one.
    """
    _import_optional_backends()
    if backend == "auto":
        chosen = _resolve_auto(u, scan_args)
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
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    name = resolve_scan_backend(backend, u, args)
    return SCAN_BACKENDS[name].fn(*args)


def _auto_candidates(u: torch.Tensor) -> list[str]:
    return [name for name in AUTO_MEASURED if name in SCAN_BACKENDS and SCAN_BACKENDS[name].available(u)]


def _in_order(u: torch.Tensor) -> str:
    return next(name for name in AUTO_ORDER if name in SCAN_BACKENDS and SCAN_BACKENDS[name].available(u))


def _resolve_auto(u: torch.Tensor, scan_args: tuple | None) -> str:
    candidates = _auto_candidates(u)
    # Inside torch.vmap (a fused training array) only the vmappable backends serve: triton, else reference.
    if len(candidates) < 2 or os.environ.get(AUTO_ENV, "").lower() == "order" or _is_vmapped(u):
        return _in_order(u)
    if scan_args is None:
        with _auto_lock:
            known = {choice.backend for key, choice in _auto_choices.items() if key[1] == tuple(u.shape)}
        return known.pop() if len(known) == 1 else _in_order(u)
    key = _auto_key(scan_args)
    with _auto_lock:
        if key in _auto_choices:
            return _auto_choices[key].backend
    if not _can_measure():
        return _in_order(u)  # inside a CUDA graph capture or a torch.compile trace: decide on an eager call
    choice = _measure(candidates, scan_args, key)
    with _auto_lock:
        choice = _auto_choices.setdefault(key, choice)
    return choice.backend


def _is_vmapped(u: torch.Tensor) -> bool:
    return torch._C._functorch.is_batchedtensor(u)


def _auto_key(scan_args: tuple) -> tuple:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = scan_args
    backward = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias)
    )
    return (
        str(u.device), tuple(u.shape), tuple(B.shape), u.dtype, B.dtype, A.dtype,
        D is not None, z is not None, delta_bias is not None, bool(delta_softplus), backward,
        torch.is_autocast_enabled("cuda"),
    )


def _describe(key: tuple) -> str:
    _, u_shape, b_shape, dtype, _, _, has_d, has_z, has_bias, _, backward, _ = key
    flags = "".join(flag for flag, on in (("+D", has_d), ("+z", has_z), ("+bias", has_bias)) if on)
    return (f"u {u_shape} B {b_shape} {str(dtype).removeprefix('torch.')}{flags}, "
            f"{'fwd+bwd' if backward else 'fwd'}")


def _can_measure() -> bool:
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return False
    compiler = getattr(torch, "compiler", None)
    return not (compiler is not None and compiler.is_compiling())


def _timed(run: Callable[[str], None], name: str, on_cuda: bool, gpu_only: bool) -> Callable[[], float]:
    """Runs `run(name)` once; returns a function giving its milliseconds.

    gpu_only (CUDA): the GPU time between two events, with a spin kernel issued first so that launch gaps do not
    count; read when asked. Otherwise the host clock from an idle stream to the call's end (launch cost included).
    """
    if not (on_cuda and gpu_only):
        stream = torch.cuda.current_stream() if on_cuda else None
        if stream is not None:
            stream.synchronize()
        began = time.perf_counter()
        run(name)
        if stream is not None:
            stream.synchronize()
        elapsed = (time.perf_counter() - began) * 1e3
        return lambda: elapsed
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(AUTO_PREFILL_CYCLES)
    start.record()
    run(name)
    end.record()

    def read() -> float:
        end.synchronize()
        return start.elapsed_time(end)

    return read


def _measure(candidates: list[str], scan_args: tuple, key: tuple) -> AutoChoice:
    """Times every candidate on detached copies of the call's tensors and picks the fastest median.

    The copies leave the caller's tensors and autograd graph alone; nothing is drawn from torch's random generators.
    Forward + backward is timed in GPU time (see `_timed`), forward alone from the host. The sync-debug mode (which
    the benchmarks set to "error") is lifted while measuring and restored.
    """
    u = scan_args[0]
    backward = key[10]
    with torch.no_grad():
        copies = [
            t.detach().clone().requires_grad_(backward and t.is_floating_point()) if torch.is_tensor(t) else t
            for t in scan_args
        ]
        # A private generator: the measurement must not move torch's global random state (seeded runs stay equal).
        generator = torch.Generator(device=u.device).manual_seed(0)
        grad_out = torch.rand(u.shape, generator=generator, device=u.device, dtype=u.dtype) if backward else None

    def run(name: str) -> None:
        with torch.set_grad_enabled(backward):
            out = SCAN_BACKENDS[name].fn(*copies)
            if backward:
                leaves = [t for t in copies[:8] if torch.is_tensor(t) and t.requires_grad]
                torch.autograd.grad(out, leaves, grad_out.to(out.dtype))

    errors: dict[str, str] = {}
    on_cuda = u.is_cuda
    debug_mode = torch.cuda.get_sync_debug_mode() if on_cuda else 0
    if on_cuda:
        torch.cuda.set_sync_debug_mode(0)
    try:
        working = []
        for name in candidates:
            try:
                for _ in range(AUTO_WARMUP):
                    run(name)
                working.append(name)
            except Exception as error:  # a backend that cannot take this shape is not a candidate here
                errors[name] = (str(error).splitlines() or [type(error).__name__])[0]
        timings: dict[str, list[Callable[[], float]]] = {name: [] for name in working}
        for _ in range(AUTO_REPEATS):
            for name in working:
                timings[name].append(_timed(run, name, on_cuda, gpu_only=backward))
        median_ms = {name: statistics.median(elapsed() for elapsed in pending) for name, pending in timings.items()}
    finally:
        if on_cuda:
            torch.cuda.set_sync_debug_mode(debug_mode)
    chosen = min(median_ms, key=median_ms.get) if median_ms else _in_order(u)
    choice = AutoChoice(chosen, _describe(key) + (" (GPU time)" if backward and u.is_cuda else " (host time)"),
                        median_ms, errors)
    times = ", ".join(f"{name} {ms:.3f} ms" for name, ms in median_ms.items())
    logger.info("selective scan: auto chose %r for %s (median %s%s)", chosen, choice.shape, times,
                f"; failed: {errors}" if errors else "")
    return choice


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
        # The CUDA kernel wants float32 A, D and delta_bias, as mamba_simple passes them, and delta, B, C and z in
        # u's dtype (it checks both).
        return _mamba_ssm_scan_fn(
            u.contiguous(),
            delta.to(u.dtype).contiguous(),
            A.float().contiguous(),
            B.to(u.dtype).contiguous(),
            C.to(u.dtype).contiguous(),
            None if D is None else D.float(),
            z=None if z is None else z.to(u.dtype).contiguous(),
            delta_bias=None if delta_bias is None else delta_bias.float(),
            delta_softplus=delta_softplus,
        )

    register_scan_backend("mamba_ssm", _mamba_ssm_scan, lambda u: u.is_cuda and u.dtype != torch.float64)
