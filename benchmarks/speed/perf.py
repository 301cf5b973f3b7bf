"""GPU performance of training: ms per step, epoch time, memory, compilations and floors per model, scan backend and
step variant; the per-expert loop MixMamba replaces; trials per hour with k trials packed on one GPU; the real search.

    python -m benchmarks.speed.perf --data-dir .devdata --out benchmarks/results/perf_h200.json
    python -m benchmarks.speed.perf --models mixmamba-small --backends triton --pack 1,8 --search-gpus 0.125,1
    python -m benchmarks.speed.perf --parts search     # also writes benchmarks/results/search_<device>.json

Every measurement is isolated (an error is recorded and the next one runs) and the JSON is rewritten after each, so a
run cut short keeps what it measured; `--budget-s` skips what would start after that many seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.data.files import resolve_dataset
from benchmarks.speed.cases import CONFIGS, DATASET, PROTOCOL, BenchData, load_bench_data
from benchmarks.speed.engine_runs import bf16_accuracy, engine_run
from benchmarks.speed.floors import measure_ceilings
from benchmarks.speed.packing import pack_trials
from benchmarks.speed.report import RESULTS_DIR, device_slug, environment, write_json
from benchmarks.speed.searches import search_throughput
from benchmarks.speed.step import VARIANTS, TimingSettings, measure_expert_loop, measure_variant, profile_step
from benchmarks.training.engine import resolve_device
from benchmarks.training.step import GRAPH_WARMUP_STEPS
from mixmamba import resolve_scan_backend

# The rows, in the order they run: what the targets need first. (config, variant, time an epoch)
ROWS = [
    ("mixmamba-small", "graph", True), ("mixmamba-small", "eager", False),
    ("mixmamba-moe16", "graph", True), ("mixmamba-moe16", "eager", False), ("mixmamba-moe16", "graph-bf16", True),
    ("patchtst", "graph-bf16", True), ("patchtst", "graph", True), ("patchtst", "eager", False),
    ("itransformer", "graph", True), ("itransformer", "eager", False),
    ("dlinear", "graph", True), ("dlinear", "eager", False),
    ("mixmamba-small", "graph-bf16", True), ("itransformer", "graph-bf16", True),
]
# Rows that spend a minute or more compiling.
EXTRA_ROWS = [
    ("mixmamba-small", "compile-graph", True), ("mixmamba-small", "compile-reduce-overhead", True),
    ("patchtst", "compile-graph-bf16", True), ("mixmamba-moe16", "compile-graph-bf16", True),
    ("mixmamba-small", "compile-autotune-graph", True),
]
# Where the GPU time of a step goes: (config, variant) profiled kernel by kernel.
PROFILED = [("mixmamba-small", "graph"), ("mixmamba-moe16", "graph"), ("patchtst", "graph-bf16")]
PARTS = ("profile", "rows", "loop", "engine", "pack", "accuracy", "extra", "search")
# Variants beyond eager / graph run with the first backend listed only.
BASE_VARIANTS = ("eager", "graph")

Work = list[tuple[str, Callable[[], None]]]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the parts `argv` asks for, in order, rewriting the JSON report after each measurement; returns it."""
    args = parse_args(argv)
    began = time.perf_counter()
    device = resolve_device(args.device)
    settings = TimingSettings(steps=args.steps, warmup=args.warmup, step_seconds=args.step_seconds,
                              max_epoch_seconds=args.max_epoch_seconds, limit_batches=args.limit_batches)
    info = environment(device)
    slug = device_slug(device, vendor=False)
    out = args.out or RESULTS_DIR / f"perf_{slug}.json"
    search_out = args.search_out or out.with_name(f"search_{slug}.json")
    report: dict[str, Any] = {
        "environment": info, "dataset": DATASET, "seq_len": PROTOCOL.seq_len, "pred_len": PROTOCOL.pred_len,
        "configs": {name: config.describe() for name, config in CONFIGS.items()},
        "settings": dataclasses.asdict(settings), "ceilings": {}, "rows": [], "expert_loop": None, "engine_runs": [],
        "accuracy": None, "packing": [], "profiles": [], "errors": [], "skipped": [],
    }
    searches: list[dict[str, Any]] = []
    work = Plan(args, device, settings, report, searches).work()
    for name, measure in work:
        elapsed = time.perf_counter() - began
        if args.budget_s is not None and elapsed > args.budget_s:
            report["skipped"].append(name)
            print(f"[{elapsed:6.1f} s] skipped {name}: past --budget-s", flush=True)
            continue
        print(f"[{elapsed:6.1f} s] {name} ...", flush=True)
        try:
            measure()
        except Exception as error:  # one failed measurement must not cost the others
            traceback.print_exc()
            report["errors"].append({"item": name, "error": f"{type(error).__name__}: {error}"[:800]})
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        report["targets"] = target_checks(report)
        report["seconds"] = time.perf_counter() - began
        write_json(out, report)
        if searches:
            write_json(search_out, {"environment": info, "searches": searches})
    print_summary(report, searches)
    print(f"wrote {out}" + (f" and {search_out}" if searches else ""))
    return report


class Plan:
    """The named measurements the command line asks for, in order; each appends its result to `report` (searches to
    `searches`). The dataset file is resolved once; its windows are loaded onto the device when a part first needs
    them."""

    def __init__(self, args: argparse.Namespace, device: torch.device, settings: TimingSettings,
                 report: dict[str, Any], searches: list[dict[str, Any]]) -> None:
        self.args = args
        self.device = device
        self.settings = settings
        self.report = report
        self.searches = searches
        self.models = _parse_list(args.models, str)
        self.variants = _parse_list(args.variants, str) if args.variants is not None else None
        self.file = resolve_dataset(DATASET, args.data_dir)
        self.backends = usable_backends(_parse_list(args.backends, str), device, report)
        self.limits = {"train.limit_train_batches": args.limit_batches, "train.limit_eval_batches": args.limit_batches}
        self._data: BenchData | None = None
        self._planned: set[tuple[str, str, str | None]] = set()

    def work(self) -> Work:
        """(name, measurement) pairs: the device's ceilings first on a GPU, then each part in the order given."""
        args, models = self.args, self.models
        work: Work = []
        if self.device.type == "cuda":
            work.append(("ceilings", self.ceilings))
        for part in _parse_list(args.parts, str):
            if part == "profile":
                for config_name, variant_name in PROFILED:
                    if config_name in models:
                        backend = self.backends[0] if CONFIGS[config_name].model == "mixmamba" and self.backends \
                            else None
                        work.append((f"profile {config_name} {variant_name}",
                                     functools.partial(self.profile, config_name, variant_name, backend)))
            elif part in ("rows", "extra"):
                work += self.rows(self.chosen_rows() if part == "rows" else EXTRA_ROWS)
            elif part == "loop" and "mixmamba-moe16" in models:
                work.append(("moe16 per-expert loop", self.expert_loop))
            elif part == "engine" and "mixmamba-small" in models:
                work.append(("engine mixmamba-small", self.engine))
            elif part == "pack":
                work += [(f"packing k={k}", functools.partial(self.pack, k)) for k in _parse_list(args.pack, int)]
            elif part == "accuracy" and "patchtst" in models:
                work.append(("patchtst bf16 accuracy", self.accuracy))
            elif part == "search":
                workdir = Path(tempfile.mkdtemp(prefix="mixbench-search-"))
                work += [(f"search gpus-per-trial {share:g}", functools.partial(self.search, share, workdir))
                         for share in _parse_list(args.search_gpus, float)]
        return work

    def chosen_rows(self) -> list[tuple[str, str, bool]]:
        """--rows as (config, variant, time an epoch), or the plan's ROWS."""
        if self.args.rows is None:
            return ROWS
        return [(item.partition(":")[0], item.partition(":")[2], True) for item in _parse_list(self.args.rows, str)]

    def rows(self, rows: list[tuple[str, str, bool]]) -> Work:
        """A measurement per row and scan backend (MixMamba only), skipping rows already planned."""
        items: Work = []
        for config_name, variant_name, epoch in rows:
            if config_name not in self.models or (self.variants is not None and variant_name not in self.variants):
                continue
            config_backends: list[str | None] = [None]
            if CONFIGS[config_name].model == "mixmamba":
                config_backends = list(self.backends if variant_name in BASE_VARIANTS else self.backends[:1])
            for backend in config_backends:
                if (config_name, variant_name, backend) in self._planned:
                    continue
                self._planned.add((config_name, variant_name, backend))
                items.append((f"{config_name} {variant_name} {backend or ''}".strip(),
                              functools.partial(self.row, config_name, variant_name, backend, epoch)))
        return items

    def data(self) -> BenchData:
        if self._data is None:
            self._data = load_bench_data(self.file, self.device)
        return self._data

    def ceilings(self) -> None:
        self.report["ceilings"].update(measure_ceilings(self.device))

    def profile(self, config_name: str, variant_name: str, backend: str | None) -> None:
        self.report["profiles"].append(profile_step(config_name, variant_name, backend, self.data(), self.device))

    def row(self, config_name: str, variant_name: str, backend: str | None, epoch: bool) -> None:
        self.report["rows"].append(measure_variant(config_name, variant_name, backend, self.data(), self.device,
                                                   self.settings, self.report["ceilings"], epoch))

    def expert_loop(self) -> None:
        self.report["expert_loop"] = measure_expert_loop(self.data(), self.device, self.settings)

    def engine(self) -> None:
        self.report["engine_runs"].append(engine_run("mixmamba-small", self.file, self.device,
                                                     {"train.epochs": 2, **self.limits}, "2 epochs, engine defaults"))

    def pack(self, k: int) -> None:
        self.report["packing"].append(pack_trials(k, self.args.data_dir, self.device, self.args.pack_epochs,
                                                  self.args.limit_batches))

    def accuracy(self) -> None:
        self.report["accuracy"] = bf16_accuracy("patchtst", self.file, self.device, None, self.args.limit_batches)

    def search(self, share: float, workdir: Path) -> None:
        args = self.args
        self.searches.append(search_throughput(share, args.search_trials, args.search_epochs, args.search_budget_s,
                                               args.data_dir, workdir))


def usable_backends(names: list[str], device: torch.device, report: dict[str, Any]) -> list[str]:
    """The listed scan backends that can run on `device`; the others are noted as skipped."""
    probe = torch.zeros(1, device=device)
    usable = []
    for name in names:
        try:
            resolve_scan_backend(name, probe)
            usable.append(name)
        except ValueError as error:
            report["skipped"].append(f"scan backend {name}: {error}")
    return usable


def target_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The H200 targets of issue 9, each with what was achieved (None when it was not measured)."""
    def best(config: str, key: str) -> dict[str, Any]:
        return min((r for r in report["rows"] if r["config"] == config and key in r), key=lambda r: r[key],
                   default={})

    def name(row: dict[str, Any]) -> str:
        return f"{row.get('variant', '-')}{' ' + row['backend'] if row.get('backend', '-') != '-' else ''}"

    small, small_epoch = best("mixmamba-small", "ms_per_step"), best("mixmamba-small", "epoch_seconds")
    moe = best("mixmamba-moe16", "ms_per_step")
    moe_fp32: dict[str, Any] = min((r for r in report["rows"] if r["config"] == "mixmamba-moe16" and not r["bf16"]),
                   key=lambda r: r["ms_per_step"], default={})
    loop = report.get("expert_loop") or {}
    patch = best("patchtst", "epoch_seconds")
    accuracy = report.get("accuracy") or {}
    packing = {entry["k"]: entry["trials_per_hour"] for entry in report.get("packing", [])}
    best_pack = max((k for k in packing if k >= 8), key=lambda k: packing[k], default=None)
    checks: list[tuple[str, float | None, Callable[[float], bool]]] = [
        (f"mixmamba-small ms/step <= 1.5 ({name(small)})", small.get("ms_per_step"), lambda v: v <= 1.5),
        (f"mixmamba-small epoch (train + validation) <= 3 s ({name(small_epoch)})",
         small_epoch.get("epoch_seconds"), lambda v: v <= 3),
        (f"mixmamba-moe16 ms/step <= 5 ({name(moe)})", moe.get("ms_per_step"), lambda v: v <= 5),
        (f"mixmamba-moe16 per-expert loop (fp32, reference scan) / batched >= 10x ({name(moe_fp32)}, fp32)",
         loop["ms_per_step"] / moe_fp32["ms_per_step"] if loop and moe_fp32 else None, lambda v: v >= 10),
        (f"mixmamba-moe16 per-expert loop / batched >= 10x ({name(moe)})",
         loop["ms_per_step"] / moe["ms_per_step"] if loop and moe else None, lambda v: v >= 10),
        (f"patchtst epoch <= 3 s ({name(patch)})", patch.get("epoch_seconds"), lambda v: v <= 3),
        ("patchtst bf16 test MSE at most 1% above 0.177 (relative difference)",
         accuracy.get("bf16_vs_reference"), lambda v: v <= 0.01),
        ("patchtst bf16 vs fp32 test MSE within 1%", accuracy.get("bf16_vs_fp32"), lambda v: abs(v) <= 0.01),
        (f"packing k >= 8 trials/hour >= 5x k = 1 (k = {best_pack})",
         packing[best_pack] / packing[1] if best_pack and 1 in packing else None, lambda v: v >= 5),
    ]
    return [{"target": target, "achieved": value, "met": None if value is None else bool(test(value))}
            for target, value, test in checks]


def print_summary(report: dict[str, Any], searches: list[dict[str, Any]]) -> None:
    """The short table the device call's output tail carries."""
    def number(value: Any, digits: int = 2) -> str:
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"

    print(f"\n{report['environment'].get('device')}, torch {report['environment']['torch']}; ceilings "
          + ", ".join(f"{key} {number(value)}" for key, value in report["ceilings"].items()
                      if isinstance(value, float)))
    print(f"{'config':<15}{'backend':<10}{'variant':<24}{'ms/step':>9}{'floor':>8}{'wall':>9}{'epoch s':>9}"
          f"{'peak MB':>9}{'graphs':>8}  sync-free graphed")
    for row in report["rows"]:
        graphs = row.get("compiled_graphs", {})
        epoch = row.get("epoch_seconds", row.get("epoch_seconds_estimate"))
        epoch_text = number(epoch) + ("" if "epoch_seconds" in row else "~")
        print(f"{row['config']:<15}{row['backend']:<10}{row['variant']:<24}{number(row['ms_per_step']):>9}"
              f"{number((row.get('floor_time') or {}).get('floor_ms'), 3):>8}{number(row['ms_per_step_wall']):>9}"
              f"{epoch_text:>9}{number(row.get('peak_gpu_memory_mb'), 0):>9}"
              f"{'/'.join(str(graphs.get(key, '-')) for key in ('train', 'eval', 'timed_epoch')):>8}  "
              f"{row['host_sync_free']} {row['graphed']}")
    for profile in report["profiles"]:
        print(f"profile {profile['config']} {profile['variant']}: {profile['ms_per_step']:.3f} ms of kernels, "
              f"{profile['launches_per_step']:.0f} launches per step; top: "
              + "; ".join(f"{top['name'][:40]} {top['ms_per_step']:.3f}" for top in profile["top"][:5]))
    if report["expert_loop"]:
        print(f"moe16 per-expert loop, reference scan: {number(report['expert_loop']['ms_per_step'])} ms/step")
    for run in report["engine_runs"]:
        print(f"engine {run['config']} ({run['label']}): epochs {[round(s, 2) for s in run['epoch_seconds']]} s, "
              f"test MSE {run['test_mse']:.4f}")
    if report["accuracy"]:
        accuracy = report["accuracy"]
        print(f"accuracy {accuracy['config']}: fp32 {accuracy['runs']['fp32']['test_mse']:.4f}, bf16 "
              f"{accuracy['runs']['bf16']['test_mse']:.4f} ({accuracy['bf16_vs_fp32']:+.2%}); epochs fp32 "
              f"{[round(s, 2) for s in accuracy['runs']['fp32']['epoch_seconds']]} bf16 "
              f"{[round(s, 2) for s in accuracy['runs']['bf16']['epoch_seconds']]}")
    for entry in report["packing"]:
        print(f"packing k={entry['k']:>2}: wall {entry['wall_seconds']:.1f} s, {entry['trials_per_hour']:.0f} "
              f"trials/hour, epochs {[round(s[0], 1) for s in entry['worker_epoch_seconds']]}")
    for search in searches:
        print(f"search gpus/trial {search['gpus_per_trial']:g}: {search['trials_finished']} finished, "
              f"{search['trials_stopped_early']} stopped, {search['trials_failed']} failed"
              f"{' (interrupted)' if search['interrupted'] else ''} in {search['wall_seconds']:.0f} s = "
              f"{search['trials_per_hour']:.0f}/hour, peak concurrent {search['peak_concurrent_trials']}")
    for check in report.get("targets", []):
        print(f"target {check['target']}: {number(check['achieved'], 3)} -> {check['met']}")
    for error in report["errors"]:
        print(f"ERROR {error['item']}: {error['error'][:300]}")
    if report["skipped"]:
        print(f"skipped: {report['skipped']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked: an unknown model, part, row or variant, or too short a warm-up, exits 2 naming
    the flag."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.perf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--backends", default="triton,reference",
                        help="MixMamba scan backends (extra variants use the first available one)")
    parser.add_argument("--variants", default=None,
                        help=f"only these step variants ({', '.join(VARIANTS)}); default: the plan's")
    parser.add_argument("--parts", default="rows,loop,engine,pack,accuracy,extra",
                        help=f"what to run, in this order, from {', '.join(PARTS)}: kernel profiles, step rows, the "
                             "moe16 per-expert loop, a real 2-epoch engine run, packed trials, PatchTST bf16 accuracy, "
                             "rows that compile for a minute or more, real searches")
    parser.add_argument("--rows", default=None,
                        help="config:variant rows for the rows part instead of the plan, e.g. dlinear:graph")
    parser.add_argument("--pack", default="1,4,8,16", help="k concurrent trials per GPU to time; '' for none")
    parser.add_argument("--pack-epochs", type=int, default=1, help="epochs per packed trial")
    parser.add_argument("--search-gpus", default="0.125,1", help="GPU shares per trial of the searches")
    parser.add_argument("--search-trials", type=int, default=16)
    parser.add_argument("--search-epochs", type=int, default=2)
    parser.add_argument("--search-budget-s", type=float, default=90.0, help="time budget of each search, seconds")
    parser.add_argument("--search-out", type=Path, default=None,
                        help="JSON for the searches (default: beside --out, search_<device>.json)")
    parser.add_argument("--steps", type=int, default=200, help="most timed steps per row (median taken)")
    parser.add_argument("--warmup", type=int, default=20, help=f"untimed steps first (> {GRAPH_WARMUP_STEPS})")
    parser.add_argument("--step-seconds", type=float, default=3.0, help="fewer timed steps when slower than this")
    parser.add_argument("--max-epoch-seconds", type=float, default=25.0,
                        help="estimate instead of timing an epoch expected to take longer")
    parser.add_argument("--limit-batches", type=int, default=None,
                        help="(smoke tests) cap every epoch's training and evaluation batches")
    parser.add_argument("--budget-s", type=float, default=None, help="start nothing after this many seconds")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--data-dir", default=None, help="default: $MIXBENCH_DATA_DIR, else ./dataset")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/perf_<device>.json")
    args = parser.parse_args(argv)
    unknown = [name for name in _parse_list(args.models, str) if name not in CONFIGS]
    if unknown:
        parser.error(f"--models: {unknown[0]!r} is unknown; use {', '.join(CONFIGS)}")
    unknown = [name for name in _parse_list(args.parts, str) if name not in PARTS]
    if unknown:
        parser.error(f"--parts: {unknown[0]!r} is unknown; use {', '.join(PARTS)}")
    for item in _parse_list(args.rows or "", str):
        config_name, _, variant_name = item.partition(":")
        if config_name not in CONFIGS or variant_name not in VARIANTS:
            parser.error(f"--rows: {item!r} is not config:variant; use configs {', '.join(CONFIGS)} and variants "
                         f"{', '.join(VARIANTS)}")
    if args.variants is not None:
        unknown = [name for name in _parse_list(args.variants, str) if name not in VARIANTS]
        if unknown:
            parser.error(f"--variants: {unknown[0]!r} is unknown; use {', '.join(VARIANTS)}")
    if args.warmup <= GRAPH_WARMUP_STEPS:
        parser.error(f"--warmup {args.warmup}: use more than {GRAPH_WARMUP_STEPS} so the graph is captured untimed")
    return args


def _parse_list(text: str, cast: Callable[[str], Any]) -> list[Any]:
    return [cast(item.strip()) for item in text.split(",") if item.strip()]


if __name__ == "__main__":
    main()
