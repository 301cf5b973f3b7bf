"""mamba_ssm's CUDA kernels beside ours: selective-scan parity and speed, and a real mamba_ssm Mamba in our expert.

Three checks, written to one JSON file (after every section, so a run cut short keeps what it measured):

1. Scan parity, at the scan shapes of every MixMamba recipe (benchmarks recipes.yaml; training and evaluation
   capacities): the `mamba_ssm`, `triton` and `reference` backends' output and all eight input gradients, float32
   and bf16, against the float64 recurrence of the same inputs. Relative error = ||x - exact|| / ||exact||.
   Asserted: float32 <= SCAN_TOLERANCE["float32"], bf16 <= SCAN_TOLERANCE["bfloat16"] (bf16 rounding of the result
   alone costs about 2^-9 = 2e-3). The largest shapes are checked on their first PARITY_MAX_ROWS batch rows.
2. Scan speed at the full recipe shapes: median ms of forward and forward+backward per backend
   (triton.testing.do_bench: back-to-back eager calls, host launch cost included), forward+backward in GPU time
   alone (what a replayed CUDA graph pays), and which backend `auto` picks there (mixmamba.scan measures and says).
3. Block parity: E real `mamba_ssm.modules.mamba_simple.Mamba` blocks with random weights, loaded into our
   `MambaExperts` through `load_per_expert_state_dict`, give the same outputs, input gradients and parameter
   gradients. mamba_ssm runs three ways: its fused path (`mamba_inner_fn`, needs causal_conv1d), its unfused path
   with causal_conv1d's conv, and as without causal_conv1d installed (torch conv1d). Our experts run with each scan
   backend. Asserted: float32 <= BLOCK_TOLERANCE["float32"]; bf16 autocast <= BLOCK_TOLERANCE["bfloat16"].

    python -m benchmarks.speed.kernel_parity --out benchmarks/results/kernel_parity_h200.json

Needs a CUDA GPU; mamba_ssm (and causal_conv1d for the fused path) built as cluster/build-mamba-kernels.sh does.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from mixmamba.experts import MAMBA_PARAMETERS, MambaExperts
from mixmamba.router import TopKRouter
from mixmamba.scan import auto_scan_choices, scan_backend_names, selective_scan

SCAN_TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2}  # vs the float64 recurrence of the same inputs
BLOCK_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}  # ours vs mamba_ssm.Mamba, outputs and every gradient
PARITY_MAX_ROWS = 512  # batch rows checked against float64 (the scan is row-independent but for dA, dD, dbias)
REFERENCE_TIMING_MAX_ELEMENTS = 1 << 30  # batch * dim * N * L above which the reference backend is not timed
GRADIENTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BLOCK_MODES = ("fused", "causal_conv1d", "no_causal_conv1d")
DEVICE = "cuda"


@dataclass(frozen=True)
class ScanShape:
    """One scan problem as StackedMamba makes it: u (batch, experts * d_inner, L), B and C (batch, experts, N, L)."""

    name: str
    batch: int  # batch_size x channels: every channel's patch sequence is one routing group
    experts: int
    d_inner: int  # expand * d_model
    d_state: int
    length: int  # the router's capacity (slots per expert per group)
    recipes: tuple[str, ...]  # "dataset/pred_len/train|eval" that make this shape

    @property
    def dim(self) -> int:
        return self.experts * self.d_inner

    @property
    def elements(self) -> int:
        return self.batch * self.dim * self.d_state * self.length


def recipe_scan_shapes(horizons: tuple[int, ...] = (96, 192, 336, 720)) -> list[ScanShape]:
    """The distinct scan shapes of every MixMamba recipe (recipes.yaml), at training and evaluation capacity."""
    from benchmarks.data.registry import get_dataset
    from benchmarks.models.registry import model_config, recipe, recipe_datasets

    found: dict[tuple[int, int, int, int, int], list[str]] = {}
    for dataset in recipe_datasets("mixmamba"):
        channels = get_dataset(dataset).n_channels
        for pred_len in horizons:
            chosen = recipe("mixmamba", dataset, pred_len)
            config = model_config("mixmamba", chosen.seq_len, pred_len, channels, chosen.model)
            router = TopKRouter(config.d_model, config.num_experts, top_k=config.top_k,
                                capacity_factor_train=config.capacity_factor_train,
                                capacity_factor_eval=config.capacity_factor_eval, min_capacity=config.min_capacity)
            for mode in ("train", "eval"):
                router.train(mode == "train")
                key = (chosen.train.get("batch_size", 32) * channels, config.num_experts,
                       config.expand * config.d_model, config.d_state, router.capacity(config.patch_num))
                found.setdefault(key, []).append(f"{dataset}/{pred_len}/{mode}")
    shapes = []
    for (batch, experts, d_inner, d_state, length), recipes in found.items():
        first = recipes[0].split("/")
        name = f"{first[0]}-E{experts}-d{d_inner}-L{length}-b{batch}"
        shapes.append(ScanShape(name, batch, experts, d_inner, d_state, length, tuple(recipes)))
    return shapes


def scan_inputs(shape: ScanShape, dtype: torch.dtype, seed: int = 0,
                rows: int | None = None) -> dict[str, torch.Tensor]:
    """Random inputs like StackedMamba's: activations in `dtype`; float32 A (S4D-real, perturbed), D and dt bias."""
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    batch = shape.batch if rows is None else min(rows, shape.batch)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator, device=DEVICE)

    s4d_real = torch.arange(1, shape.d_state + 1, device=DEVICE, dtype=torch.float32).repeat(shape.dim, 1)
    steps = torch.rand(shape.dim, generator=generator, device=DEVICE) * 0.099 + 0.001
    return dict(
        u=randn(batch, shape.dim, shape.length).to(dtype),
        delta=(randn(batch, shape.dim, shape.length) * 0.5).to(dtype),
        A=-s4d_real * torch.exp(randn(shape.dim, shape.d_state) * 0.1),
        B=randn(batch, shape.experts, shape.d_state, shape.length).to(dtype),
        C=randn(batch, shape.experts, shape.d_state, shape.length).to(dtype),
        D=randn(shape.dim),
        z=randn(batch, shape.dim, shape.length).to(dtype),
        delta_bias=steps.expm1().log(),  # inverse softplus, as Mamba's dt_proj bias starts
    )


def relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return ((value.double() - expected).norm() / expected.norm().clamp(min=1e-300)).item()


def scan_with_gradients(backend: str, inputs: dict[str, torch.Tensor],
                        grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
    leaves = {name: t.detach().requires_grad_() for name, t in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=True, backend=backend)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out.to(out.dtype))
    return {"out": out.detach(), **{f"d{name}": g for name, g in zip(leaves, grads)}}


def scan_parity(shape: ScanShape, dtype_name: str, backends: list[str]) -> dict[str, Any]:
    """Every backend's output and gradients against the float64 recurrence (the reference backend in float64)."""
    rows = PARITY_MAX_ROWS if shape.batch > PARITY_MAX_ROWS else None
    inputs = scan_inputs(shape, DTYPES[dtype_name], rows=rows)
    grad_out = torch.randn(inputs["u"].shape, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
    exact = scan_with_gradients("reference", {k: v.double() for k, v in inputs.items()}, grad_out.double())
    result: dict[str, Any] = {"rows_checked": inputs["u"].shape[0], "tolerance": SCAN_TOLERANCE[dtype_name]}
    for backend in backends:
        # NaN in the allocator's freed blocks: an output element a kernel never writes shows up as NaN.
        poison = torch.empty(inputs["u"].numel() * 8, device=DEVICE).fill_(float("nan"))
        del poison
        measured = scan_with_gradients(backend, inputs, grad_out)
        errors = {key: relative_error(measured[key], exact[key]) for key in exact}
        finite = all(bool(torch.isfinite(t).all()) for t in measured.values())
        worst = max(errors.values())
        result[backend] = {"errors_vs_float64": errors, "worst": worst, "all_finite": finite,
                           "passed": finite and worst <= SCAN_TOLERANCE[dtype_name]}
    return result


def median_ms(fn: Callable[[], object]) -> float:
    """triton.testing.do_bench's median: back-to-back calls, so a call whose host launch cost exceeds its GPU time
    is timed by the host (what an eager caller waits for)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def gpu_median_ms(fn: Callable[[], object], repeats: int = 20) -> float:
    """Median GPU time of one call: a spin kernel first, so the host has issued the call before the GPU reaches it
    (what a replayed CUDA graph pays), as mixmamba.scan's `auto` times training calls."""
    from mixmamba.scan import AUTO_PREFILL_CYCLES

    for _ in range(3):
        fn()
    pairs = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(AUTO_PREFILL_CYCLES)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in pairs)
    return times[len(times) // 2]


def time_scan(shape: ScanShape, dtype_name: str, backends: list[str]) -> dict[str, Any]:
    """Median ms of forward and forward+backward per backend at the full shape, and `auto`'s choice there."""
    inputs = scan_inputs(shape, DTYPES[dtype_name])
    leaves = {name: t.detach().requires_grad_() for name, t in inputs.items()}
    grad_out = torch.randn_like(inputs["u"])
    result: dict[str, Any] = {}
    for backend in backends:
        if backend == "reference" and shape.elements > REFERENCE_TIMING_MAX_ELEMENTS:
            result[backend] = {"skipped": f"{shape.elements} state-steps > {REFERENCE_TIMING_MAX_ELEMENTS}"}
            continue

        def forward() -> torch.Tensor:
            return selective_scan(**leaves, delta_softplus=True, backend=backend)

        def forward_backward() -> None:
            torch.autograd.grad(forward(), list(leaves.values()), grad_out)

        with torch.no_grad():
            forward_ms = median_ms(forward)
        result[backend] = {"forward_ms": forward_ms, "forward_backward_ms": median_ms(forward_backward),
                           "forward_backward_gpu_ms": gpu_median_ms(forward_backward)}
    before = len(auto_scan_choices())
    out = selective_scan(**leaves, delta_softplus=True, backend="auto")
    torch.autograd.grad(out, list(leaves.values()), grad_out)
    with torch.no_grad():
        selective_scan(**leaves, delta_softplus=True, backend="auto")
    result["auto"] = [asdict(choice) for choice in auto_scan_choices()[before:]]
    return result


# ---------------------------------------------------------------------------------------------------- block parity

@contextlib.contextmanager
def mamba_ssm_mode(mode: str) -> Iterator[bool]:
    """Run mamba_simple.Mamba `mode`'s way; yields whether its modules were built with use_fast_path."""
    import mamba_ssm.modules.mamba_simple as mamba_simple

    if mode == "no_causal_conv1d":
        saved = mamba_simple.causal_conv1d_fn
        mamba_simple.causal_conv1d_fn = None  # what mamba_simple sees when causal_conv1d is not installed
        try:
            yield True
        finally:
            mamba_simple.causal_conv1d_fn = saved
    else:
        if mamba_simple.causal_conv1d_fn is None:
            raise RuntimeError("causal_conv1d is not installed")
        yield mode == "fused"


def real_mamba_blocks(experts: int, d_model: int, d_state: int, seed: int) -> list[torch.nn.Module]:
    """E mamba_ssm Mamba blocks: mamba_ssm's random init, with A_log, D and the biases perturbed (nothing trivial)."""
    from mamba_ssm.modules.mamba_simple import Mamba

    torch.manual_seed(seed)
    blocks = []
    for _ in range(experts):
        block = Mamba(d_model, d_state=d_state, d_conv=4, expand=2).to(DEVICE)
        with torch.no_grad():
            block.A_log.add_(0.2 * torch.randn_like(block.A_log))
            block.D.add_(0.2 * torch.randn_like(block.D))
            block.conv1d.bias.add_(0.1 * torch.randn_like(block.conv1d.bias))
            block.dt_proj.bias.add_(0.1 * torch.randn_like(block.dt_proj.bias))
        blocks.append(block)
    return blocks


def block_parity(experts: int, d_model: int, d_state: int, batch: int, length: int, mode: str, our_backend: str,
                 dtype_name: str, seed: int = 0) -> dict[str, Any]:
    """Ours (one MambaExperts layer holding the real blocks' weights) vs the real blocks, expert by expert."""
    with mamba_ssm_mode(mode) as fast_path:
        blocks = real_mamba_blocks(experts, d_model, d_state, seed)
        for block in blocks:
            block.use_fast_path = fast_path
        ours = MambaExperts(experts, d_model, d_state, 4, 2, scan_backend=our_backend).to(DEVICE)
        state = {f"experts.{e}.{key}": value
                 for e, block in enumerate(blocks) for key, value in block.state_dict().items()}
        ours.load_per_expert_state_dict(state)

        generator = torch.Generator(DEVICE).manual_seed(seed + 1)
        x = torch.randn(experts, batch, length, d_model, device=DEVICE, generator=generator)
        weight = torch.randn(experts, batch, length, d_model, device=DEVICE, generator=generator)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype_name == "bfloat16")

        x_real = x.clone().requires_grad_()
        with autocast:
            real_out = torch.stack([block(x_real[e]) for e, block in enumerate(blocks)])
        (real_out.float() * weight).sum().backward()
        x_ours = x.clone().requires_grad_()
        with autocast:
            our_out = ours(x_ours)
        (our_out.float() * weight).sum().backward()

    errors = {"out": relative_error(our_out.float(), real_out.float()),
              "dx": relative_error(x_ours.grad, x_real.grad)}
    layer = ours.layers[0]
    for mamba_name, stacked_name in MAMBA_PARAMETERS.items():
        real_grad = torch.stack([dict(block.named_parameters())[mamba_name].grad for block in blocks])
        errors[f"d{mamba_name}"] = relative_error(getattr(layer, stacked_name).grad, real_grad)
    worst = max(errors.values())
    finite = bool(torch.isfinite(our_out).all()) and bool(torch.isfinite(real_out).all())
    return {"errors": errors, "worst": worst, "all_finite": finite, "tolerance": BLOCK_TOLERANCE[dtype_name],
            "passed": finite and worst <= BLOCK_TOLERANCE[dtype_name]}


BLOCK_CASES = (  # (name, experts, d_model, batch, length): the ETTh1 recipe's training shape and a wider expert
    ("ETTh1-train", 2, 64, 224, 8),
    ("ETTh1-eval", 2, 64, 224, 12),
    ("exchange-d256", 4, 256, 64, 8),
)


# ------------------------------------------------------------------------------------------------------------ main

def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "scan_backends": scan_backend_names(),
                            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
                            "cudnn_tf32": torch.backends.cudnn.allow_tf32}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    for module in ("mamba_ssm", "causal_conv1d", "triton"):
        try:
            info[module] = __import__(module).__version__
        except Exception as error:  # noqa: BLE001 - reported, not fatal
            info[module] = f"not importable: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    return info


def write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def run(out: Path, sections: set[str]) -> dict[str, Any]:
    began = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 on both sides
    torch.backends.cudnn.allow_tf32 = False
    shapes = recipe_scan_shapes()
    backends = [name for name in ("mamba_ssm", "triton", "reference") if name in scan_backend_names()]
    report: dict[str, Any] = {"environment": environment(), "tolerances": {"scan": SCAN_TOLERANCE,
                              "block": BLOCK_TOLERANCE}, "shapes": [asdict(shape) for shape in shapes],
                              "scan_parity": {}, "scan_timing": {}, "block_parity": {}, "failures": []}
    write(out, report)

    def guarded(section: str, key: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as error:  # noqa: BLE001 - one failing case must not lose the others
            report["failures"].append({"section": section, "case": key, "error": repr(error),
                                       "traceback": traceback.format_exc(limit=4)})
            print(f"FAILED {section} {key}: {error!r}", file=sys.stderr)
            return None
        finally:
            torch.cuda.empty_cache()

    if "scan" in sections:
        for shape in shapes:
            for dtype_name in DTYPES:
                key = f"{shape.name}/{dtype_name}"
                report["scan_parity"][key] = guarded("scan_parity", key,
                                                     lambda: scan_parity(shape, dtype_name, backends))
                write(out, report)
    if "timing" in sections:
        for shape in shapes:
            for dtype_name in DTYPES:
                key = f"{shape.name}/{dtype_name}"
                report["scan_timing"][key] = guarded("scan_timing", key, lambda: time_scan(shape, dtype_name, backends))
                write(out, report)
    if "block" in sections:
        for name, experts, d_model, batch, length in BLOCK_CASES:
            for mode in BLOCK_MODES:
                for backend in backends:
                    for dtype_name in DTYPES:
                        key = f"{name}/{mode}/{backend}/{dtype_name}"
                        report["block_parity"][key] = guarded(
                            "block_parity", key,
                            lambda: block_parity(experts, d_model, 8, batch, length, mode, backend, dtype_name))
                write(out, report)
    report["seconds"] = time.perf_counter() - began
    write(out, report)
    return report


def summary(report: dict[str, Any]) -> str:
    lines = []
    for key, entry in report["scan_parity"].items():
        if entry:
            cells = [f"{b} {entry[b]['worst']:.1e}{'' if entry[b]['passed'] else ' FAIL'}"
                     for b in ("mamba_ssm", "triton", "reference") if b in entry]
            lines.append(f"scan parity {key}: " + ", ".join(cells))
    for key, entry in report["scan_timing"].items():
        if entry:
            cells = [f"{b} {entry[b]['forward_backward_ms']:.3f} (GPU {entry[b]['forward_backward_gpu_ms']:.3f})"
                     for b in ("mamba_ssm", "triton", "reference") if b in entry and "forward_backward_ms" in entry[b]]
            chosen = ", ".join(f"{c['shape'].split(',')[-1].strip()}->{c['backend']}" for c in entry.get("auto", []))
            lines.append(f"fwd+bwd ms {key}: " + ", ".join(cells) + f"; auto: {chosen}")
    for key, entry in report["block_parity"].items():
        if entry:
            lines.append(f"block {key}: worst {entry['worst']:.1e}{'' if entry['passed'] else ' FAIL'}")
    lines.append(f"failures: {len(report['failures'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kernel_parity_h200.json"))
    parser.add_argument("--sections", default="scan,timing,block", help="comma-separated: scan, timing, block")
    parser.add_argument("--list-shapes", action="store_true", help="print the recipe scan shapes and exit (no GPU)")
    args = parser.parse_args(argv)
    if args.list_shapes:
        for shape in recipe_scan_shapes():
            print(f"{shape.name}: u ({shape.batch}, {shape.dim}, {shape.length}) B ({shape.batch}, {shape.experts}, "
                  f"{shape.d_state}, {shape.length}); {', '.join(shape.recipes)}")
        return 0
    if not torch.cuda.is_available():
        print("kernel_parity needs a CUDA GPU (use --list-shapes without one)", file=sys.stderr)
        return 2
    report = run(args.out, set(args.sections.split(",")))
    print(summary(report))
    print(f"wrote {args.out}")
    return 0 if not report["failures"] and all(
        entry is None or all(v.get("passed", True) for v in entry.values() if isinstance(v, dict))
        for entry in report["scan_parity"].values()) and all(
        entry is None or entry["passed"] for entry in report["block_parity"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
