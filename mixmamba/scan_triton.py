"""Triton selective-scan backend: fused forward and backward kernels over all experts in one launch.

Owns the kernels, the `mixmamba::selective_scan_triton` custom op (traceable by torch.compile) and the "triton"
backend registration with mixmamba.scan. Importing it needs Triton; mixmamba.scan imports it only when Triton is there.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from mixmamba.scan import register_scan_backend

_MAX_DSTATE = 256


@triton.jit
def _softplus(x):
    # log1p(w) as log(1 + w) * w / ((1 + w) - 1): plain log(1 + w) loses the small steps that dt_bias init makes.
    w = tl.exp(-tl.abs(x))
    w1 = 1.0 + w
    log1p_w = tl.where(w1 == 1.0, w, tl.log(w1) * (w / tl.where(w1 == 1.0, 1.0, w1 - 1.0)))
    return tl.maximum(x, 0.0) + log1p_w


@triton.jit
def _load_step(delta_ptr, bias, offs, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """One time step of delta after bias and softplus, and the raw value softplus saw (for its derivative)."""
    raw = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias
    if SOFTPLUS:
        return _softplus(raw), raw
    return raw, raw


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    dim, dim_per_group, n_groups, dstate, seqlen, blocks_per_group,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # One program: one batch row, BLOCK_D channels of one group (expert), every state; time runs inside.
    # Tiles are (state, channel) and A comes as (dstate, dim): its load, contiguous along channels, gives every tile
    # one channel per thread, so sums over states stay in a thread and per-channel vectors need no layout change.
    pid_b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) // blocks_per_group
    d_in_group = (tl.program_id(1) % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d_in_group < dim_per_group
    d = g * dim_per_group + d_in_group                                   # (BLOCK_D,)
    n = tl.arange(0, BLOCK_N)
    n_mask = n < dstate
    row = pid_b * dim * seqlen + d * seqlen                              # (BLOCK_D,) offset of u[b, d, 0]
    bc_row = (pid_b * n_groups + g) * seqlen * dstate + n                # (BLOCK_N,) B[b, g, n, 0]; B is (b, G, L, N)

    A = tl.load(A_ptr + n[:, None] * dim + d[None, :], mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    A = A.to(tl.float32)                                                 # (BLOCK_N, BLOCK_D)
    Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_D else 0.0
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else 0.0

    x = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)                   # state, float32 whatever the inputs
    for t in range(seqlen):
        u_t = tl.load(u_ptr + row + t, mask=d_mask, other=0.0).to(tl.float32)
        dt, _ = _load_step(delta_ptr, bias, row + t, d_mask, HAS_BIAS, SOFTPLUS)
        B_t = tl.load(B_ptr + bc_row + t * dstate, mask=n_mask, other=0.0).to(tl.float32)
        C_t = tl.load(C_ptr + bc_row + t * dstate, mask=n_mask, other=0.0).to(tl.float32)
        x = tl.exp(A * dt[None, :]) * x + B_t[:, None] * (dt * u_t)[None, :]
        y = tl.sum(x * C_t[:, None], axis=0)                             # (BLOCK_D,)
        if HAS_D:
            y += Dv * u_t
        if HAS_Z:
            z_t = tl.load(z_ptr + row + t, mask=d_mask, other=0.0).to(tl.float32)
            y = y * z_t * tl.sigmoid(z_t)
        tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=d_mask)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, rho_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr,
    dim, dim_per_group, n_groups, dstate, seqlen, blocks_per_group,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Per (b, d, n): x_t = a_t x_{t-1} + b_t with a_t = exp(delta_t A), b_t = delta_t u_t B_t, y_t = sum_n C_t x_t.
    # The adjoint g_t = dy_t C_t + a_{t+1} g_{t+1} runs backwards in time while x_t runs forwards. Their one coupled
    # term, d(delta_t A) = g_t a_t x_{t-1}, equals sum_{s>=t} (dy_s C_s x_s - g_s b_s), a reverse cumulative sum of a
    # forward-pass term and a backward-pass term. So a forward pass and a reverse pass suffice and no state is
    # stored: the forward pass leaves rho_s = sum_n A dy_s C_s x_s, one float per (b, d, s), for the reverse pass.
    pid_b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) // blocks_per_group
    d_in_group = (tl.program_id(1) % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d_in_group < dim_per_group
    d = g * dim_per_group + d_in_group                                   # (BLOCK_D,)
    n = tl.arange(0, BLOCK_N)
    n_mask = n < dstate
    nd_mask = n_mask[:, None] & d_mask[None, :]
    row = pid_b * dim * seqlen + d * seqlen                              # (BLOCK_D,)
    bc_row = (pid_b * n_groups + g) * seqlen * dstate + n                # (BLOCK_N,)

    A = tl.load(A_ptr + n[:, None] * dim + d[None, :], mask=nd_mask, other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_D)
    Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_D else 0.0
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else 0.0

    # Forward pass: states, dz, dC, dD and the forward half of dA and ddelta.
    x = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    delta_cum = tl.zeros((BLOCK_D,), dtype=tl.float32)                   # sum_{s<=t} delta_s
    for t in range(seqlen):
        u_t = tl.load(u_ptr + row + t, mask=d_mask, other=0.0).to(tl.float32)
        dt, _ = _load_step(delta_ptr, bias, row + t, d_mask, HAS_BIAS, SOFTPLUS)
        B_t = tl.load(B_ptr + bc_row + t * dstate, mask=n_mask, other=0.0).to(tl.float32)
        C_t = tl.load(C_ptr + bc_row + t * dstate, mask=n_mask, other=0.0).to(tl.float32)
        dout_t = tl.load(dout_ptr + row + t, mask=d_mask, other=0.0).to(tl.float32)
        x = tl.exp(A * dt[None, :]) * x + B_t[:, None] * (dt * u_t)[None, :]
        xC = x * C_t[:, None]                                            # (BLOCK_N, BLOCK_D)
        if HAS_Z:
            z_t = tl.load(z_ptr + row + t, mask=d_mask, other=0.0).to(tl.float32)
            z_sig = tl.sigmoid(z_t)
            out_t = tl.sum(xC, axis=0)
            if HAS_D:
                out_t += Dv * u_t
            dz_t = dout_t * out_t * z_sig * (1.0 + z_t * (1.0 - z_sig))
            tl.store(dz_ptr + row + t, dz_t.to(dz_ptr.dtype.element_ty), mask=d_mask)
            dy_t = dout_t * z_t * z_sig
        else:
            dy_t = dout_t
        dD_acc += dy_t * u_t
        dC_t = tl.sum(x * dy_t[None, :], axis=1)                         # (BLOCK_N,)
        tl.atomic_add(dC_ptr + bc_row + t * dstate, dC_t, mask=n_mask, sem="relaxed")
        tl.store(rho_ptr + row + t, dy_t * tl.sum(A * xC, axis=0), mask=d_mask)
        delta_cum += dt
        dA_acc += xC * (delta_cum * dy_t)[None, :]

    # The reverse pass reads what other threads of this program may have stored above.
    tl.debug_barrier()

    # Reverse pass: adjoint states, du, ddelta, dB, ddelta_bias and the backward half of dA.
    adj = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)                 # g_t
    a_next = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)              # a_{t+1}
    rev_cum = tl.zeros((BLOCK_D,), dtype=tl.float32)                     # sum_{s>=t} (rho_s - gamma_s)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(seqlen):
        t = seqlen - 1 - i
        u_t = tl.load(u_ptr + row + t, mask=d_mask, other=0.0).to(tl.float32)
        dt, raw = _load_step(delta_ptr, bias, row + t, d_mask, HAS_BIAS, SOFTPLUS)
        B_t = tl.load(B_ptr + bc_row + t * dstate, mask=n_mask, other=0.0).to(tl.float32)
        C_t = tl.load(C_ptr + bc_row + t * dstate, mask=n_mask, other=0.0).to(tl.float32)
        dy_t = tl.load(dout_ptr + row + t, mask=d_mask, other=0.0).to(tl.float32)
        if HAS_Z:
            z_t = tl.load(z_ptr + row + t, mask=d_mask, other=0.0).to(tl.float32)
            dy_t = dy_t * z_t * tl.sigmoid(z_t)
        adj = C_t[:, None] * dy_t[None, :] + a_next * adj
        a_next = tl.exp(A * dt[None, :])
        adj_B = tl.sum(adj * B_t[:, None], axis=0)                      # (BLOCK_D,)
        adj_b = adj * B_t[:, None] * (dt * u_t)[None, :]                # g_t * b_t
        rev_cum += tl.load(rho_ptr + row + t, mask=d_mask, other=0.0) - tl.sum(A * adj_b, axis=0)
        ddelta_t = u_t * adj_B + rev_cum
        du_t = dt * adj_B
        if HAS_D:
            du_t += Dv * dy_t
        dA_acc -= adj_b * delta_cum[None, :]
        delta_cum -= dt
        dB_t = tl.sum(adj * (dt * u_t)[None, :], axis=1)                # (BLOCK_N,)
        tl.atomic_add(dB_ptr + bc_row + t * dstate, dB_t, mask=n_mask, sem="relaxed")
        if SOFTPLUS:
            ddelta_t = ddelta_t * tl.sigmoid(raw)
        dbias_acc += ddelta_t
        tl.store(ddelta_ptr + row + t, ddelta_t.to(ddelta_ptr.dtype.element_ty), mask=d_mask)
        tl.store(du_ptr + row + t, du_t.to(du_ptr.dtype.element_ty), mask=d_mask)

    tl.atomic_add(dA_ptr + n[:, None] * dim + d[None, :], dA_acc, mask=nd_mask, sem="relaxed")  # dA as (N, dim)
    if HAS_D:
        tl.atomic_add(dD_ptr + d, dD_acc, mask=d_mask, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + d, dbias_acc, mask=d_mask, sem="relaxed")


@dataclass(frozen=True)
class LaunchConfig:
    """How the kernels tile the work: channels per program (a power of two); one warp per 32 of them.

    32 (one warp) was fastest on an H200 for MixMamba's shapes, forward and backward (benchmarks/speed/scan_bench.py).
    """

    block_d: int = 32


def _launch_shape(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, config: LaunchConfig) -> tuple[tuple, dict]:
    """The grid (batch, groups x channel blocks) and the size arguments shared by both kernels."""
    batch, dim, seqlen = u.shape
    n_groups, dstate = B.shape[1], A.shape[1]
    dim_per_group = dim // n_groups
    block_n = triton.next_power_of_2(dstate)
    block_d = min(triton.next_power_of_2(dim_per_group), config.block_d)
    blocks_per_group = triton.cdiv(dim_per_group, block_d)
    sizes = dict(dim=dim, dim_per_group=dim_per_group, n_groups=n_groups, dstate=dstate, seqlen=seqlen,
                 blocks_per_group=blocks_per_group, BLOCK_D=block_d, BLOCK_N=block_n,
                 num_warps=max(1, block_d // 32))
    return (batch, n_groups * blocks_per_group), sizes


def _check_inputs(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
    """Raise ValueError, naming the input, for shapes the kernels cannot index."""
    batch, dim, seqlen = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta has shape {tuple(delta.shape)}; give it u's shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim or A.is_complex():
        raise ValueError(f"A must be a real (dim={dim}, dstate) tensor, got {A.dtype} {tuple(A.shape)}")
    dstate = A.shape[1]
    if dstate > _MAX_DSTATE:
        raise ValueError(f"the triton scan holds dstate <= {_MAX_DSTATE} states per channel, got {dstate}")
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != dstate or t.shape[3] != seqlen:
            raise ValueError(f"{name} must be (batch={batch}, groups, dstate={dstate}, L={seqlen}), "
                             f"got {tuple(t.shape)}")
        if dim % t.shape[1] != 0:
            raise ValueError(f"{name} has {t.shape[1]} groups, which do not divide dim={dim}")
    if B.shape[1] != C.shape[1]:
        raise ValueError(f"B and C must have the same number of groups, got {B.shape[1]} and {C.shape[1]}")


def _kernel_layouts(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A as (dstate, dim) and B, C as (batch, G, L, dstate), contiguous: the layouts the kernels index.

    A contiguous along channels sets the tile layout to one channel per thread; B, C contiguous along states let each
    thread read its states at constant offsets. These copies are small: B and C are dim / G times smaller than u.
    """
    return A.t().contiguous(), B.transpose(-1, -2).contiguous(), C.transpose(-1, -2).contiguous()


def triton_scan_forward(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
    config: LaunchConfig = LaunchConfig(),
) -> torch.Tensor:
    """Launch the forward kernel once for all groups: (batch, dim, L) in u's dtype. No autograd."""
    grid, sizes = _launch_shape(u, A, B, config)
    u, delta = u.contiguous(), delta.contiguous()
    D, z, delta_bias = (None if t is None else t.contiguous() for t in (D, z, delta_bias))
    A_k, B_k, C_k = _kernel_layouts(A, B, C)
    out = torch.empty_like(u)
    _scan_fwd_kernel[grid](
        u, delta, A_k, B_k, C_k, D, z, delta_bias, out, **sizes,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
    )
    return out


def triton_scan_backward(
    dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
    config: LaunchConfig = LaunchConfig(),
) -> tuple[Optional[torch.Tensor], ...]:
    """Launch the backward kernel once: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None for absent inputs."""
    grid, sizes = _launch_shape(u, A, B, config)
    dout, u, delta = dout.contiguous(), u.contiguous(), delta.contiguous()
    D, z, delta_bias = (None if t is None else t.contiguous() for t in (D, z, delta_bias))
    A_k, B_k, C_k = _kernel_layouts(A, B, C)
    f32 = dict(dtype=torch.float32, device=u.device)
    du = torch.empty_like(u)
    dz = torch.empty_like(z) if z is not None else None
    ddelta = torch.empty_like(delta)
    rho = torch.empty(u.shape, **f32)
    # Summed with atomics across programs, so they start at zero, in float32 and in the kernels' layouts.
    dA_k, dB_k, dC_k = (torch.zeros(t.shape, **f32) for t in (A_k, B_k, C_k))
    dD = torch.zeros(D.shape, **f32) if D is not None else None
    dbias = torch.zeros(delta_bias.shape, **f32) if delta_bias is not None else None
    _scan_bwd_kernel[grid](
        u, delta, A_k, B_k, C_k, D, z, delta_bias, dout, rho, du, ddelta, dA_k, dB_k, dC_k, dD, dz, dbias, **sizes,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
    )
    return (
        du,
        ddelta,
        dA_k.t().contiguous().to(A.dtype),
        dB_k.transpose(-1, -2).contiguous().to(B.dtype),
        dC_k.transpose(-1, -2).contiguous().to(C.dtype),
        None if D is None else dD.to(D.dtype),
        dz,
        None if delta_bias is None else dbias.to(delta_bias.dtype),
    )


@torch.library.custom_op("mixmamba::selective_scan_triton", mutates_args=())
def _scan_op(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
) -> torch.Tensor:
    return triton_scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


@_scan_op.register_fake
def _scan_op_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return torch.empty_like(u, memory_format=torch.contiguous_format)


@torch.library.custom_op("mixmamba::selective_scan_triton_bwd", mutates_args=())
def _scan_bwd_op(
    dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor]:
    # A custom op returns a fixed number of tensors: an absent input's gradient comes back empty.
    grads = triton_scan_backward(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return tuple(u.new_empty(0) if grad is None else grad for grad in grads)


@_scan_bwd_op.register_fake
def _scan_bwd_op_fake(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    def like(t):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None else u.new_empty(0)
    return like(u), like(delta), like(A), like(B), like(C), like(D), like(z), like(delta_bias)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
    ctx.delta_softplus = delta_softplus


def _backward(ctx, dout):
    u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dz, dbias = _scan_bwd_op(dout, u, delta, A, B, C, D, z, delta_bias,
                                                         ctx.delta_softplus)
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
            dbias if delta_bias is not None else None, None)


_scan_op.register_autograd(_backward, setup_context=_setup_context)


def _scan_vmap(info, in_dims, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """torch.vmap over K independent scans (the members of a fused training array) as one scan: the member dim is
    folded into the channels and B/C's groups, (K, batch, dim, L) -> (batch, K*dim, L), so channel k*dim + j keeps
    reading member k's group. One launch serves every member, as one serves every expert."""
    members = info.batch_size

    def member_first(t, dim):
        if t is None:
            return None
        return t.movedim(dim, 0) if dim is not None else t.expand(members, *t.shape)

    u, delta, A, B, C, D, z, delta_bias = (member_first(t, d) for t, d in zip((u, delta, A, B, C, D, z, delta_bias),
                                                                                in_dims))
    batch, dim, length = u.shape[1:]

    def fold(t):  # (K, batch, c, ...) -> (batch, K*c, ...)
        return None if t is None else t.transpose(0, 1).reshape(batch, members * t.shape[2], *t.shape[3:])

    out = _scan_op(fold(u), fold(delta), A.reshape(members * dim, -1), fold(B), fold(C),
                   None if D is None else D.reshape(-1), fold(z),
                   None if delta_bias is None else delta_bias.reshape(-1), delta_softplus)
    return out.reshape(batch, members, dim, length).transpose(0, 1), 0


torch.library.register_vmap("mixmamba::selective_scan_triton", _scan_vmap)


def selective_scan_triton(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Selective scan with mamba_ssm's shapes, computed by the Triton kernels; differentiable in every input.

    u, delta, z: (batch, dim, L); A: (dim, N) real; B, C: (batch, G, N, L) with dim divisible by G (one group per
    expert when the experts are folded into dim); D, delta_bias: (dim,). Returns (batch, dim, L) in u's dtype; the
    state is kept in float32. Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.
    """
    _check_inputs(u, delta, A, B, C)
    return _scan_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def triton_available(tensor: torch.Tensor) -> bool:
    """Whether the "triton" backend serves tensors like this one: CUDA, and not float64 (its state is float32)."""
    return tensor.is_cuda and tensor.dtype != torch.float64


register_scan_backend("triton", selective_scan_triton, triton_available)
