"""The ST-MoE top-k router with injected draws: capacity, gates, coin flips, losses, slots, gradients, stats."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from mixmamba.router import TopKRouter


def dense_combine(routing):
    """The official dense combine (G, n, E, c) from the router's index form: each request's gate at its slot."""
    num_experts, capacity = routing.stats.expert_share.shape[0], routing.stats.capacity
    slots = F.one_hot(routing.request_slots, num_experts * capacity + 1)[..., :-1].to(routing.request_gates.dtype)
    top_k, groups, length = routing.request_slots.shape
    return (routing.request_gates[..., None] * slots).sum(0).reshape(groups, length, num_experts, capacity)


def dense_dispatch(routing):
    """The official dense dispatch: 1 at a filled slot, carrying combine's gradient (straight-through)."""
    combine = dense_combine(routing)
    return combine.bool().to(combine.dtype) + (combine - combine.detach())


def make_router(d_model=8, num_experts=4, top_k=2, **kwargs):
    torch.manual_seed(0)
    return TopKRouter(d_model, num_experts, top_k=top_k, **kwargs).double()


def renormalised_top_gates(router, x):
    probs = router.gate(x).softmax(-1)
    values, experts = probs.topk(router.top_k, dim=-1)
    return values / values.sum(-1, keepdim=True), experts  # (G, n, k) each


ROUTER_CASES = [
    case
    for case in itertools.product([2, 4], [2, 3], [5, 12, 40], [True, False], [True, False])
    if case[1] <= case[0]
]


@pytest.mark.parametrize("num_experts,top_k,group_size,training,official", ROUTER_CASES)
def test_capacity_is_never_exceeded(num_experts, top_k, group_size, training, official):
    router = make_router(num_experts=num_experts, top_k=top_k, official_slot_offsets=official, min_capacity=2)
    router.train(training)
    x = torch.randn(3, group_size, 8, dtype=torch.float64)
    routing = router(x, route_draws=torch.zeros(top_k - 1, 3, group_size, dtype=torch.float64))
    capacity = router.capacity(group_size)
    assert dense_combine(routing).shape == (3, group_size, num_experts, capacity)
    kept = dense_combine(routing) > 0  # (G, n, E, c)
    assert kept.sum(dim=-1).max() <= 1  # a token holds at most one slot per expert
    if official and top_k >= 3:
        # the official offsets may put two tokens in one slot (see the slot test below); slots stay < capacity
        assert kept.any(dim=1).sum(dim=-1).max() <= capacity
    else:
        assert kept.sum(dim=1).max() <= 1  # no two tokens share a slot
        assert kept.sum(dim=(1, 3)).max() <= capacity  # tokens per expert per group


def test_train_and_eval_capacity():
    router = make_router(num_experts=4)
    router.train()
    assert router.capacity(40) == 12  # int(40 * 1.25 / 4)
    assert router.capacity(12) == 8  # min_capacity
    assert router.capacity(5) == 8  # min_capacity even above the group size, as the official code
    router.eval()
    assert router.capacity(40) == 20  # int(40 * 2.0 / 4)
    assert router.capacity(12) == 8
    two = make_router(num_experts=2)
    two.eval()
    assert two.capacity(12) == 12  # min(n, int(12 * 2.0 / 2))
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    assert dense_combine(router(x)).shape[-1] == 20
    router.train()
    assert dense_combine(router(x)).shape[-1] == 12


def test_combine_weights_of_kept_tokens_equal_their_renormalised_gates():
    router = make_router(num_experts=4, top_k=3, min_capacity=32)  # room for every token
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    routing = router(x, route_draws=torch.zeros(2, 2, 10, dtype=torch.float64))  # every choice requested
    gates, experts = renormalised_top_gates(router, x)
    expected = torch.zeros(2, 10, 4, dtype=torch.float64).scatter(-1, experts, gates)
    torch.testing.assert_close(dense_combine(routing).sum(-1), expected, rtol=0, atol=1e-15)
    assert torch.equal(dense_dispatch(routing), (dense_combine(routing) > 0).double())


def test_later_choices_are_taken_with_probability_gate_over_threshold():
    router = make_router(num_experts=4, top_k=2, min_capacity=32)
    x = 4 * torch.randn(1, 30, 8, dtype=torch.float64)  # peaked gates: some second gates fall below 0.2
    draws = torch.rand(1, 1, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    routing = router(x, route_draws=draws)
    gates, experts = renormalised_top_gates(router, x)
    taken_second = dense_combine(routing).sum(-1).gather(-1, experts[..., 1:2])[..., 0] > 0  # (1, 30)
    expected = draws[0] < gates[..., 1] / 0.2
    assert torch.equal(taken_second, expected)
    assert 0 < expected.sum() < 30  # the draws decide both ways here
    # first choices are always taken (capacity allows)
    assert (dense_combine(routing).sum(-1).gather(-1, experts[..., :1]) > 0).all()


def test_same_generator_seed_gives_the_same_routing():
    router = make_router(num_experts=4, top_k=2, noise=1.0)
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    router.generator = torch.Generator().manual_seed(7)
    first = dense_combine(router(x))
    router.generator = torch.Generator().manual_seed(7)
    assert torch.equal(dense_combine(router(x)), first)


def test_noise_is_gumbel_on_the_logits_and_z_loss_ignores_it():
    router = make_router(num_experts=4, top_k=2, noise=0.5, min_capacity=32)
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    uniform = torch.rand(1, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    routing = router(x, route_draws=torch.zeros(1, 1, 6, dtype=torch.float64), noise_draws=uniform)
    logits = router.gate(x)
    noisy = logits + 0.5 * -torch.log(-torch.log(uniform))
    first_choice = noisy.argmax(-1)
    expected_first = torch.nn.functional.one_hot(first_choice, 4).double().mean(dim=(0, 1))
    torch.testing.assert_close(routing.stats.first_choice_share, expected_first)
    torch.testing.assert_close(routing.z_loss, torch.logsumexp(logits, -1).square().mean())


def test_balance_loss_is_exactly_one_for_uniform_gates():
    router = make_router(num_experts=4)
    with torch.no_grad():
        router.gate.weight.zero_()
    routing = router(torch.randn(3, 12, 8, dtype=torch.float64))
    assert routing.balance_loss.item() == 1.0
    torch.testing.assert_close(routing.z_loss, torch.log(torch.tensor(4.0, dtype=torch.float64)) ** 2)
    torch.testing.assert_close(routing.aux_loss, 1e-2 * routing.balance_loss + 1e-3 * routing.z_loss)


def test_balance_loss_is_one_for_balanced_first_choices_and_grows_with_imbalance():
    router = make_router(d_model=1, num_experts=2)
    with torch.no_grad():
        router.gate.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    p = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))  # gate of the preferred expert for x = +-1
    balanced = torch.tensor([1.0, -1.0] * 6, dtype=torch.float64).view(1, 12, 1)
    torch.testing.assert_close(router(balanced).balance_loss, torch.tensor(1.0, dtype=torch.float64))
    one_sided = torch.ones(1, 12, 1, dtype=torch.float64)
    # all first choices on expert 0: mean(p * 1, (1 - p) * 0) * 2^2 = 2p
    torch.testing.assert_close(router(one_sided).balance_loss, 2 * p)


def test_losses_are_zero_in_eval_mode():
    router = make_router()
    router.eval()
    routing = router(torch.randn(2, 12, 8, dtype=torch.float64))
    assert routing.balance_loss.item() == 0.0 and routing.z_loss.item() == 0.0 and routing.aux_loss.item() == 0.0


def one_hot_tokens_router(orders):
    """A router over 3 experts whose token type i (one-hot input i) ranks the experts as orders[i]."""
    router = TopKRouter(len(orders), 3, top_k=3, min_capacity=8).double()
    logits = torch.zeros(3, len(orders), dtype=torch.float64)
    for token_type, order in enumerate(orders):
        for rank, expert in enumerate(order):
            logits[expert, token_type] = 3.0 - rank
    with torch.no_grad():
        router.gate.weight.copy_(logits)
    return router


def test_official_slot_offsets_let_a_third_choice_share_a_first_choice_slot():
    # tokens 0, 1 prefer expert 0 first; token 2 ranks experts 1 > 2 > 0, so its third choice is expert 0.
    x = torch.eye(2, dtype=torch.float64)[[0, 0, 1]].view(1, 3, 2)
    draws = torch.zeros(2, 1, 3, dtype=torch.float64)
    official = one_hot_tokens_router([[0, 1, 2], [1, 2, 0]])
    slots = dense_dispatch(official(x, route_draws=draws))[0, :, 0]  # (n, c) of expert 0
    # the official code offsets third choices by the second choices' count only (0 at expert 0): slot 0 again
    assert slots[0, 0] == 1 and slots[2, 0] == 1
    fixed = one_hot_tokens_router([[0, 1, 2], [1, 2, 0]])
    fixed.official_slot_offsets = False
    slots = dense_dispatch(fixed(x, route_draws=draws))[0, :, 0]
    assert slots[0, 0] == 1 and slots[1, 1] == 1 and slots[2, 2] == 1 and slots[:, 0].sum() == 1


def test_first_choices_fill_slots_before_second_choices_in_sequence_order():
    x = torch.eye(2, dtype=torch.float64)[[0, 1, 0, 1]].view(1, 4, 2)
    router = one_hot_tokens_router([[0, 1, 2], [1, 0, 2]])
    router.top_k = 2
    routing = router(x, route_draws=torch.zeros(1, 1, 4, dtype=torch.float64))
    slot_of = dense_dispatch(routing)[0].argmax(-1)  # (n, E) slot per token and expert
    assert slot_of[:, 0].tolist() == [0, 2, 1, 3]  # expert 0: tokens 0, 2 first; then tokens 1, 3 as second choice
    assert slot_of[:, 1].tolist() == [2, 0, 3, 1]


def test_index_form_names_one_slot_per_filled_request_and_the_spare_slot_otherwise():
    router = make_router(num_experts=4, top_k=2, min_capacity=2, capacity_factor_train=0.0)  # drops requests
    x = torch.randn(3, 12, 8, dtype=torch.float64)
    routing = router(x)
    spare = 4 * routing.stats.capacity
    filled = routing.request_slots < spare
    assert filled.any() and (~filled).any()
    assert torch.equal(routing.request_gates > 0, filled)
    _, experts = renormalised_top_gates(router, x)
    assert torch.equal((routing.request_slots // routing.stats.capacity)[filled], experts.permute(2, 0, 1)[filled])


def test_stats_count_shares_and_drops():
    # 4 tokens of one type all prefer expert 0 then 1; capacity 2 -> expert 0 keeps 2 first choices,
    # expert 1 keeps 2 second choices (tokens 0, 1), the other requests drop; tokens 2, 3 get nothing.
    router = one_hot_tokens_router([[0, 1, 2]])
    router.top_k, router.min_capacity, router.capacity_factor_train = 2, 2, 0.0
    routing = router(torch.ones(1, 4, 1, dtype=torch.float64), route_draws=torch.zeros(1, 1, 4, dtype=torch.float64))
    stats = routing.stats
    assert stats.capacity == 2
    assert stats.expert_share.tolist() == [0.5, 0.5, 0.0]
    assert stats.first_choice_share.tolist() == [1.0, 0.0, 0.0]
    assert stats.dropped_assignment_rate.item() == 0.5
    assert stats.dropped_token_rate.item() == 0.5
    assert not stats.expert_share.requires_grad


def test_coin_flips_also_decide_in_eval_mode_as_the_official_code():
    router = make_router(num_experts=4, top_k=2, min_capacity=32)
    router.eval()
    x = 4 * torch.randn(1, 30, 8, dtype=torch.float64)
    always = dense_combine(router(x, route_draws=torch.zeros(1, 1, 30, dtype=torch.float64)))
    rarely = dense_combine(router(x, route_draws=torch.full((1, 1, 30), 0.999, dtype=torch.float64)))
    assert (always > 0).sum() > (rarely > 0).sum()
