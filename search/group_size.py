"""How many trials one fused group trains (`--fuse`): a given number, `off` (1), or `auto`: as many members as fit in
a trial's share of GPU memory, by one member's training memory measured on a GPU at the largest of the proposals the
search checks before it starts (a later, larger proposal can need more: the half of the share left free covers it).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import ray
import torch

from benchmarks.data.timefeatures import n_time_features
from benchmarks.errors import SettingError
from benchmarks.experiment import Experiment

MAX_AUTO_MEMBERS = 16      # measured on an H200: MixMamba's per-member step gains little beyond 16 (fused_h200.json)
MIN_AUTO_GROUPS = 4        # auto keeps at least this many groups, so TPE learns between them
MEMORY_HEADROOM = 0.5      # of a share's memory: CUDA graph pools, evaluation buffers, the allocator's slack
ESTIMATE_BATCH = 1
MEASURED_PROPOSALS = 2     # the largest proposals by the CPU estimate, measured on a GPU
BYTES_PER_PARAM = 16       # fp32 weight, gradient and Adam's two moments


@dataclass(frozen=True)
class GroupSize:
    """The members per group and the sentence that says why (printed when the search starts)."""

    members: int
    reason: str


def member_bytes(experiment: Experiment) -> int:
    """An estimate of one member's training memory, to rank proposals: weights, gradients and Adam's moments, plus
    what autograd saves for the backward pass, counted on the CPU at a small batch and scaled to the batch size."""
    torch.manual_seed(experiment.seed)
    model = experiment.build_model()
    params = sum(parameter.numel() for parameter in model.parameters())
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    channels = experiment.model_config_dict()["enc_in"]
    x = torch.randn(ESTIMATE_BATCH, experiment.seq_len, channels)
    x_mark = torch.zeros(ESTIMATE_BATCH, experiment.seq_len, n_time_features(experiment.protocol.freq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forecast, aux_loss = model(x, x_mark)
    del forecast, aux_loss
    return params * BYTES_PER_PARAM + saved * experiment.train.batch_size // ESTIMATE_BATCH


def choose_group_size(fuse: int | str, *, trials: int, gpu_share: float, proposals: Sequence[Experiment],
                      seeds: int = 1) -> GroupSize:
    """The members per group for `--fuse` `fuse` (parsed) when each of `trials` configurations trains `seeds` members:
    a number as given (at most the members in all; a multiple of `seeds`); `auto` on GPUs the most members whose
    measured memory fits MEMORY_HEADROOM of a share, at most MAX_AUTO_MEMBERS and leaving MIN_AUTO_GROUPS groups;
    `auto` without GPUs 1 (a CPU gains nothing from fusing). With seeds, a group holds whole configurations: at least
    one (its seeds train as one array), so `off` or 1 means one configuration per group."""
    if seeds > 1 and fuse != "auto" and int(fuse) > 1 and int(fuse) % seeds:
        raise SettingError(f"{{setting}} {fuse} does not hold whole configurations of {seeds} seeds (--config-seeds); "
                           f"use a multiple of {seeds}, e.g. {max(seeds, int(fuse) // seeds * seeds)}", setting="fuse")
    size = _members(fuse, trials=trials * seeds, gpu_share=gpu_share, proposals=proposals)
    if seeds == 1:
        return size
    members = max(seeds, size.members // seeds * seeds)
    if size.members == 1:
        return GroupSize(members, f"each configuration's {seeds} seeds as one array; {size.reason}")
    beyond = f", above the {size.members} the estimate allows: a configuration's seeds train together" \
        if members > size.members else ""
    return GroupSize(members, f"{members // seeds} configuration(s) x {seeds} seeds{beyond}; {size.reason}")


def _members(fuse: int | str, *, trials: int, gpu_share: float, proposals: Sequence[Experiment]) -> GroupSize:
    if fuse != "auto":
        members = min(int(fuse), trials)
        return GroupSize(members, "as --fuse asks" if members > 1 else "off")
    if not gpu_share:
        return GroupSize(1, "off: auto fuses on GPUs only")
    # The CPU estimate ranks the proposals (its reference scan saves more than the GPU kernels, so it errs high);
    # the largest ones are then measured on a GPU like the trials'.
    largest = sorted(proposals, key=member_bytes, reverse=True)[:MEASURED_PROPOSALS]
    task = ray.remote(num_gpus=min(gpu_share, 1.0), num_cpus=0)(measure_on_gpu)
    try:
        measured, device_bytes = ray.get(task.remote(largest))
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None) or error
        raise SettingError(f"{{setting}} auto could not measure a member's memory on a GPU ({type(cause).__name__}: "
                           f"{(str(cause).splitlines() or [''])[0]}); pass a number, e.g. --fuse 8, or --fuse off",
                           setting="fuse") from None
    share_bytes = device_bytes * min(gpu_share, 1.0)
    fit = max(1, math.floor(share_bytes * MEMORY_HEADROOM / measured))
    members = max(1, min(MAX_AUTO_MEMBERS, fit, trials // MIN_AUTO_GROUPS or 1))
    return GroupSize(members, f"auto: one training step of the largest of {len(proposals)} checked proposals peaks at "
                              f"{measured / 2**20:.0f} MiB on the GPU; {fit} such members fit in half of a "
                              f"{gpu_share:g}-GPU share ({share_bytes / 2**30:.0f} GiB); at most {MAX_AUTO_MEMBERS}, "
                              f"and {MIN_AUTO_GROUPS}+ groups")


def measure_on_gpu(experiments: Sequence[Experiment]) -> tuple[int, int]:
    """(the largest peak GPU memory of one Adam training step of each experiment's model on random inputs, the GPU's
    memory), in a Ray worker holding a GPU share."""
    device = torch.device("cuda")
    peak = 0
    for experiment in experiments:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        model = experiment.build_model().to(device)
        optimizer = torch.optim.Adam(model.parameters())
        batch, channels = experiment.train.batch_size, experiment.model_config_dict()["enc_in"]
        x = torch.randn(batch, experiment.seq_len, channels, device=device)
        x_mark = torch.zeros(batch, experiment.seq_len, n_time_features(experiment.protocol.freq), device=device)
        for _ in range(2):  # the second step holds Adam's moments too
            forecast, aux_loss = model(x, x_mark)
            (forecast.square().mean() + aux_loss).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        peak = max(peak, torch.cuda.max_memory_allocated(device) - before)
        del model, optimizer, x, x_mark, forecast, aux_loss
    return peak, torch.cuda.get_device_properties(device).total_memory
