"""The MoE layer: dropped tokens come out exactly 0, kept ones as the gate-weighted sum of their experts' outputs."""
from __future__ import annotations

import pytest
import torch

from mixmamba.experts import MambaExperts
from mixmamba.mamba import Mamba
from mixmamba.moe import MixtureOfMambaExperts
from mixmamba.router import TopKRouter
from tests.mixmamba.test_topk_router import dense_combine, dense_dispatch


def small_moe(min_capacity: int, capacity_factor: float) -> MixtureOfMambaExperts:
    torch.manual_seed(0)
    router = TopKRouter(
        8, 3, top_k=2, min_capacity=min_capacity,
        capacity_factor_train=capacity_factor, capacity_factor_eval=capacity_factor,
    )
    experts = MambaExperts(3, d_model=8, d_state=4, official_init=True)
    return MixtureOfMambaExperts(router, experts).double()


def test_dropped_tokens_give_exactly_zero_and_kept_tokens_do_not():
    moe = small_moe(min_capacity=2, capacity_factor=0.0)  # 2 slots per expert for 10 tokens: many drops
    x = torch.randn(4, 10, 8, dtype=torch.float64)
    routing = moe.router(x, route_draws=torch.zeros(1, 4, 10, dtype=torch.float64))
    out = moe(x).tokens
    dropped = dense_combine(routing).sum(dim=(2, 3)) == 0  # (G, n)
    assert dropped.sum() > 0 and (~dropped).sum() > 0
    assert torch.equal(out[dropped], torch.zeros_like(out[dropped]))
    assert (out[~dropped].abs().sum(-1) > 0).all()


def test_output_is_the_gate_weighted_sum_of_each_expert_run_over_its_slots():
    moe = small_moe(min_capacity=16, capacity_factor=2.0)
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    moe.router.generator = torch.Generator().manual_seed(3)
    out = moe(x).tokens
    moe.router.generator = torch.Generator().manual_seed(3)
    routing = moe.router(x)
    state = moe.experts.per_expert_state_dict()
    expected = torch.zeros_like(x)
    for e in range(3):
        block = Mamba(8, d_state=4).double()
        block.load_state_dict({k[len(f"experts.{e}."):]: v for k, v in state.items() if k.startswith(f"experts.{e}.")})
        slots_in = torch.einsum("gnd,gnc->gcd", x, dense_dispatch(routing)[:, :, e])  # expert e's slot sequence
        slots_out = block(slots_in)  # (G, c, d)
        expected += torch.einsum("gcd,gnc->gnd", slots_out, dense_combine(routing)[:, :, e])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("top_k", "official"), [(2, True), (3, True), (3, False)])
def test_index_dispatch_equals_the_official_einsums_forward_and_backward(top_k: int, official: bool) -> None:
    """The official layer: expert inputs = einsum(tokens, dispatch), output = einsum(expert outputs, combine), with
    dispatch straight-through; ours gathers and scatters by index. Official slot offsets with top_k 3 let two tokens
    share a slot (their inputs add up), which the scatter reproduces."""
    torch.manual_seed(1)
    router = TopKRouter(8, 3, top_k=top_k, min_capacity=2, capacity_factor_train=0.6,
                        official_slot_offsets=official)
    moe = MixtureOfMambaExperts(router, MambaExperts(3, d_model=8, d_state=4, official_init=True)).double()
    x = torch.randn(4, 10, 8, dtype=torch.float64, requires_grad=True)
    draws = torch.rand(top_k - 1, 4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = moe(x, route_draws=draws).tokens
    weights = torch.randn_like(out)
    ours = torch.autograd.grad((out * weights).sum(), [x, *moe.parameters()])

    routing = moe.router(x, route_draws=draws)
    expert_inputs = torch.einsum("gnd,gnec->egcd", x, dense_dispatch(routing))
    expected = torch.einsum("egcd,gnec->gnd", moe.experts(expert_inputs), dense_combine(routing))
    official_grads = torch.autograd.grad((expected * weights).sum(), [x, *moe.parameters()])
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-14)
    assert ours[1].abs().sum() > 0  # the gate's weight learns through dispatch and combine
    for mine, theirs in zip(ours, official_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-13)
