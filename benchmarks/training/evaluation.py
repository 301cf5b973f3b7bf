"""Scoring a forecaster on a split: MSE and MAE over every window (TSLib's f_dim for S/MS), and the routing
statistics of models that report them through the `RoutingReporter` hook."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from benchmarks.data.protocol import WindowedSplit
from benchmarks.errors import SettingError
from benchmarks.training.member_stack import MemberStack
from benchmarks.training.step import FusedEvalStep, at_least_float32

ROUTING_NAMES = ("expert_share", "first_choice_share", "dropped_token_rate")


@runtime_checkable
class RoutingReporter(Protocol):
    """A mixture-of-experts model: expert_share (E,), first_choice_share (E,), dropped_token_rate () of its last
    forward pass, or None before any."""

    def routing_statistics(self) -> dict[str, torch.Tensor] | None: ...


@dataclass(frozen=True)
class Score:
    """MSE and MAE over the scored windows (`windows` of the split's `total`), and routing means if reported."""

    mse: float
    mae: float
    windows: int
    total: int
    routing: dict[str, np.ndarray] | None = None


def target_channels(features: str) -> slice:
    """The scored output channels: all for M, the last (the target) for MS and S, as TSLib's f_dim."""
    return slice(-1, None) if features in ("MS", "S") else slice(None)


def evaluate(model: nn.Module | Callable[..., tuple[torch.Tensor, torch.Tensor]], split: WindowedSplit, *,
             features: str, batch_size: int, limit: int | None = None, bf16: bool = False, seed: int | None = None,
             collect_routing: bool = False) -> Score:
    """Score `model` over the windows of `split`: squared / absolute errors summed in float64, divided by their count.

    model: the module, or its torch.compile'd form (full batches run through it, the last partial one through the
      module, so nothing recompiles). limit: at most this many batches (a capped score says so in `windows`).
    seed: draw the pass's random numbers from torch's generator seeded so (the global state is left untouched);
      MixMamba's router flips coins for second choices in eval mode too.
    """
    module = getattr(model, "_orig_mod", model)
    device = next(module.parameters()).device
    if seed is not None:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return evaluate(model, split, features=features, batch_size=batch_size, limit=limit, bf16=bf16,
                            collect_routing=collect_routing)
    target = target_channels(features)
    module.eval()
    squared = torch.zeros((), dtype=torch.float64, device=device)
    absolute = torch.zeros((), dtype=torch.float64, device=device)
    count = windows = 0
    routing = _RoutingTally() if collect_routing and isinstance(module, RoutingReporter) else None
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for batch in split.iter_batches(batch_size, limit=limit):
            forward = model if batch.x.shape[0] == batch_size else module
            forecast, _ = forward(batch.x, batch.x_mark)  # (B, pred_len, C_in)
            error = at_least_float32(forecast[..., target]) - batch.y[..., target]
            squared += error.square().sum(dtype=torch.float64)
            absolute += error.abs().sum(dtype=torch.float64)
            count += error.numel()
            windows += batch.x.shape[0]
            if routing is not None:
                routing.add(module.routing_statistics(), batch.x.shape[0])
    if count == 0:
        raise SettingError(f"a split has no windows to evaluate ({{setting}}={limit}); use shorter windows or a "
                           "larger limit", setting="train.limit_eval_batches")
    mse, mae = (torch.stack([squared, absolute]) / count).tolist()
    return Score(mse, mae, windows, split.num_windows, routing.summary() if routing is not None else None)


def evaluate_members(stack: MemberStack, split: WindowedSplit, *, features: str, batch_size: int,
                     generators: list[torch.Generator], limit: int | None = None, bf16: bool = False,
                     collect_routing: bool = False, step: FusedEvalStep | None = None) -> list[Score]:
    """`evaluate` for every member of `stack` at once, each batch read once and shared by all members; member k
    draws its random inputs from generators[k] (as its model alone would from the global generator).

    step: the array's FusedEvalStep (its CUDA graph kept from pass to pass), used unless routing is collected."""
    device = next(iter(stack.params.values())).device
    target = target_channels(features)
    stack.train(False)
    members = stack.size
    squared = torch.zeros(members, dtype=torch.float64, device=device)
    absolute = torch.zeros(members, dtype=torch.float64, device=device)
    count = windows = 0
    tallies = [_RoutingTally() for _ in range(members)] if collect_routing and stack.reports_routing else None
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for batch in split.iter_batches(batch_size, limit=limit):
            draws = stack.draw(batch.x.shape[0], generators)
            if step is not None and tallies is None:
                sums = step(batch, draws)  # (K, 2) summed squared and absolute errors
            else:
                forecast, _, routing = stack.forward(batch.x, batch.x_mark, draws, shared_input=True,
                                                     with_routing=tallies is not None)  # (K, B, pred_len, C_in)
                error = at_least_float32(forecast[..., target]) - batch.y[..., target]
                sums = torch.stack([error.square().sum(dim=(1, 2, 3), dtype=torch.float64),
                                    error.abs().sum(dim=(1, 2, 3), dtype=torch.float64)], dim=1)
                for member, tally in enumerate(tallies or ()):
                    tally.add({name: value[member] for name, value in routing.items()}, batch.x.shape[0])
            squared += sums[:, 0]
            absolute += sums[:, 1]
            count += batch.y[..., target].numel()
            windows += batch.x.shape[0]
    if count == 0:
        raise SettingError(f"a split has no windows to evaluate ({{setting}}={limit}); use shorter windows or a "
                           "larger limit", setting="train.limit_eval_batches")
    mse, mae = (torch.stack([squared, absolute]) / count).tolist()
    return [Score(mse[k], mae[k], windows, split.num_windows, tallies[k].summary() if tallies else None)
            for k in range(members)]


class _RoutingTally:
    """Window-weighted means of a model's per-batch routing statistics over a pass."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # name -> sum over batches of statistic x windows
        self.windows = 0

    def add(self, statistics: dict[str, torch.Tensor] | None, windows: int) -> None:
        if statistics is None:
            return
        for name in ROUTING_NAMES:
            value = statistics[name].double() * windows
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.windows += windows

    def summary(self) -> dict[str, np.ndarray] | None:
        """expert_share (E,), first_choice_share (E,), dropped_token_rate (); None when nothing was reported."""
        if not self.sums:
            return None
        return {name: (total / self.windows).cpu().numpy() for name, total in self.sums.items()}
