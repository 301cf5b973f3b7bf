"""CPU benchmark of MixMamba's batched experts against a per-expert loop (forward + backward ms per training step).

Run `python -m benchmarks.speed.moe_bench` (e.g. `--cases moe16 --steps 5`); writes benchmarks/results/moe_cpu.json
and prints a table.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import click
import torch
from torch import nn

from benchmarks.speed.report import RESULTS_DIR, device_name, write_json
from mixmamba import Mamba, MambaExperts, MixMamba, MixMambaConfig, RoutingStats, StackedMamba, forecast_loss

RESULTS_PATH = RESULTS_DIR / "moe_cpu.json"


@dataclass(frozen=True)
class BenchCase:
    """One benchmark setting: the model config and the batch size (sequences = batch * enc_in)."""

    name: str
    batch: int
    config: MixMambaConfig


# Weather scale: 21 channels, lookback 96, horizon 96.
CASES = {
    "small": BenchCase(
        "small", 32, MixMambaConfig(seq_len=96, pred_len=96, enc_in=21, d_model=64, num_experts=2, top_k=2)
    ),
    "moe16": BenchCase(
        "moe16", 16, MixMambaConfig(seq_len=96, pred_len=96, enc_in=21, d_model=256, num_experts=16, top_k=5)
    ),
}


class LoopedExperts(nn.Module):
    """The same experts run the way the official code runs them: each expert's Mamba over its own slots, in turn."""

    def __init__(self, experts: MambaExperts, scan_backend: str = "auto") -> None:
        super().__init__()
        state = experts.per_expert_state_dict()
        layer = cast(StackedMamba, experts.layers[0])
        self.blocks = nn.ModuleList()
        for e in range(experts.num_experts):
            block = Mamba(layer.d_model, layer.d_state, layer.d_conv, layer.d_inner // layer.d_model,
                          scan_backend=scan_backend)
            prefix = f"experts.{e}."
            block.load_state_dict({key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)})
            self.blocks.append(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(E, G, capacity, d) -> (E, G, capacity, d)."""
        return torch.stack([block(x[e]) for e, block in enumerate(self.blocks)])


def time_training_steps(
    models: dict[str, MixMamba], x: torch.Tensor, y: torch.Tensor, warmup: int, steps: int
) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU milliseconds of each timed forward + backward (aux loss included) per model.

    The models take turns step by step, so load from other processes on a shared machine hits them alike; process
    CPU time is what the process itself spent, which such load inflates much less than wall time.
    """
    times: dict[str, dict[str, list[float]]] = {name: {"wall_ms": [], "cpu_ms": []} for name in models}
    for step in range(warmup + steps):
        for name, model in models.items():
            model.train()
            model.moe.router.generator = torch.Generator().manual_seed(step)
            wall, cpu = time.perf_counter(), time.process_time()
            forecast, aux = model(x)
            (forecast_loss(forecast, y) + aux).backward()
            wall, cpu = (time.perf_counter() - wall) * 1000.0, (time.process_time() - cpu) * 1000.0
            model.zero_grad(set_to_none=True)
            if step >= warmup:
                times[name]["wall_ms"].append(wall)
                times[name]["cpu_ms"].append(cpu)
    return times


def max_forecast_difference(batched: MixMamba, looped: MixMamba, x: torch.Tensor) -> float:
    """Largest |batched - looped| forecast difference for the same routing draws (dropout off)."""
    forecasts = []
    for model in (batched, looped):
        model.eval()
        model.moe.router.generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            forecasts.append(model(x)[0])
    return (forecasts[0] - forecasts[1]).abs().max().item()


def run_case(case: BenchCase, warmup: int, steps: int) -> dict[str, Any]:
    """Batched and looped experts of one case from the same weights: median step times, speedups, forecast gap."""
    torch.manual_seed(0)
    batched = MixMamba(case.config)
    looped = MixMamba(case.config)
    looped.load_state_dict(batched.state_dict())
    looped.moe.experts = LoopedExperts(cast(MambaExperts, batched.moe.experts))
    x = torch.randn(case.batch, case.config.seq_len, case.config.enc_in)
    y = torch.randn(case.batch, case.config.pred_len, case.config.enc_in)
    times = time_training_steps({"batched": batched, "loop": looped}, x, y, warmup, steps)
    medians = {
        name: {kind: statistics.median(values) for kind, values in kinds.items()} for name, kinds in times.items()
    }
    return {
        "name": case.name,
        "batch": case.batch,
        "sequences": case.batch * case.config.enc_in,
        "capacity_train": cast(RoutingStats, batched.last_routing).capacity,
        "parameters": sum(p.numel() for p in batched.parameters()),
        "config": asdict(case.config),
        "batched_ms_per_step": medians["batched"]["wall_ms"],
        "loop_ms_per_step": medians["loop"]["wall_ms"],
        "batched_cpu_ms_per_step": medians["batched"]["cpu_ms"],
        "loop_cpu_ms_per_step": medians["loop"]["cpu_ms"],
        "speedup_wall": medians["loop"]["wall_ms"] / medians["batched"]["wall_ms"],
        "speedup_cpu": medians["loop"]["cpu_ms"] / medians["batched"]["cpu_ms"],
        "all_steps": times,
        "max_abs_forecast_diff": max_forecast_difference(batched, looped, x),
    }


@click.command()
@click.option("--cases", default="small,moe16", show_default=True, help="Comma-separated cases: small, moe16.")
@click.option("--warmup", default=1, show_default=True, help="Untimed steps per case and variant.")
@click.option("--steps", default=3, show_default=True, help="Timed steps per case and variant (the median is kept).")
@click.option("--threads", default=1, show_default=True,
              help="torch CPU threads; with 1, process CPU time is the compute itself (no threads spinning).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS_PATH, show_default=True)
def main(cases: str, warmup: int, steps: int, threads: int, output: Path) -> None:
    """Time forward + backward of MixMamba on CPU with batched experts and with a per-expert loop.

    \b
    Example:
        python -m benchmarks.speed.moe_bench --cases small,moe16 --steps 3 --threads 1
    """
    torch.set_num_threads(threads)
    names = [name.strip() for name in cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown or steps < 1:
        raise click.BadParameter(f"cases {unknown} / steps {steps}: use cases from {sorted(CASES)} and steps >= 1")
    load_before = os.getloadavg()[0]
    results = [run_case(CASES[name], warmup, steps) for name in names]
    report = {
        "device": f"cpu: {device_name(torch.device('cpu'))}",
        "load_average_1min_before": load_before,
        "load_average_1min_after": os.getloadavg()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "warmup": warmup,
        "steps": steps,
        "results": results,
    }
    write_json(output, report)
    click.echo(
        f"{report['device']}, torch {report['torch']}, {threads} thread(s), median of {steps} steps, "
        f"load average {load_before:.1f} -> {report['load_average_1min_after']:.1f}"
    )
    click.echo(
        f"{'case':<8}{'seqs':>6}{'E':>4}{'k':>3}{'d':>5}{'batched ms':>12}{'loop ms':>10}{'batched cpu':>13}"
        f"{'loop cpu':>10}{'speedup cpu':>13}{'max diff':>10}"
    )
    for row in results:
        config = row["config"]
        click.echo(
            f"{row['name']:<8}{row['sequences']:>6}{config['num_experts']:>4}{config['top_k']:>3}{config['d_model']:>5}"
            f"{row['batched_ms_per_step']:>12.0f}{row['loop_ms_per_step']:>10.0f}"
            f"{row['batched_cpu_ms_per_step']:>13.0f}{row['loop_cpu_ms_per_step']:>10.0f}"
            f"{row['speedup_cpu']:>13.2f}{row['max_abs_forecast_diff']:>10.1e}"
        )
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()
