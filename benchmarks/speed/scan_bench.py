"""GPU parity and timing of the selective-scan backends: `triton` against `reference` (and `mamba_ssm` if installed).

One run checks the triton scan's output and every input gradient against the reference backend (float32 and bf16)
and the float64 recurrence, times forward and forward+backward with triton.testing.do_bench (median), sweeps the
triton tiling, times a batched-experts training step, checks torch.compile(fullgraph=True) through the op, and
writes JSON after every section (so a run cut short still leaves its numbers):

    python -m benchmarks.speed.scan_bench          # -> benchmarks/results/scan_<device>.json, e.g. scan_h200.json
    python -m benchmarks.speed.scan_bench --out /tmp/scan.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.speed.report import RESULTS_DIR, device_slug
from mixmamba.experts import MambaExperts
from mixmamba.scan import SCAN_BACKENDS, scan_backend_names, selective_scan

try:
    import triton
    import triton.testing

    from mixmamba.scan_triton import LaunchConfig, selective_scan_triton, triton_scan_backward, triton_scan_forward
except ImportError:  # CPU-only installs: --help still works, and main() stops before anything needs Triton
    triton = None

GRADIENT_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
FLOAT32_TOLERANCE = 1e-4  # ||triton - reference|| / ||reference|| for the output and every gradient
SWEEP_BLOCK_D = (16, 32, 64, 128)
DEVICE = "cuda"


@dataclass(frozen=True)
class ScanShape:
    """One scan problem: u (batch, groups * channels, length), B and C (batch, groups, dstate, length)."""

    name: str
    batch: int
    groups: int  # experts folded into the channel dim
    channels: int  # per group: expand * d_model
    dstate: int
    length: int  # tokens per expert sequence (the router's capacity)
    timed: bool
    note: str


SHAPES = (
    ScanShape("mamba-block-test", 2, 1, 80, 8, 12, False, "tests/mixmamba/test_mamba_block.py: Mamba(40, d_state=8)"),
    ScanShape("experts-test", 4, 3, 32, 8, 8, False, "tests/mixmamba/test_batched_experts.py: 3 experts, d_model 16"),
    ScanShape("model-test", 6, 4, 32, 16, 8, False, "tests/mixmamba/test_mixmamba_model.py: 4 experts, d_model 16"),
    ScanShape("odd-sizes", 3, 3, 24, 5, 7, False, "masked lanes along channels and states"),
    ScanShape("long-L64", 8, 2, 128, 16, 64, False, "the longest expert sequence MixMamba makes"),
    ScanShape("small-L8", 672, 2, 128, 16, 8, True, "batch 32 x 21 channels, 2 experts x 2*64, train capacity 8"),
    ScanShape("small-L12", 672, 2, 128, 16, 12, True, "as small-L8 at eval capacity 12"),
    ScanShape("moe16", 336, 16, 512, 16, 8, True, "batch 16 x 21 channels, 16 experts x 2*256, capacity 8"),
)


def scan_inputs(shape: ScanShape, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs as StackedMamba makes them: activations in `dtype`, float32 A (S4D-real), D and dt bias."""
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    dim = shape.groups * shape.channels

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator, device=DEVICE)

    s4d_real = torch.arange(1, shape.dstate + 1, device=DEVICE, dtype=torch.float32).repeat(dim, 1)
    steps = torch.rand(dim, generator=generator, device=DEVICE) * 0.099 + 0.001
    return dict(
        u=randn(shape.batch, dim, shape.length).to(dtype),
        delta=(randn(shape.batch, dim, shape.length) * 0.5).to(dtype),
        A=-s4d_real * torch.exp(randn(dim, shape.dstate) * 0.1),
        B=randn(shape.batch, shape.groups, shape.dstate, shape.length).to(dtype),
        C=randn(shape.batch, shape.groups, shape.dstate, shape.length).to(dtype),
        D=randn(dim),
        z=randn(shape.batch, dim, shape.length).to(dtype),
        delta_bias=steps.expm1().log(),  # inverse softplus, as Mamba's dt_proj bias starts
    )


def poison_cached_memory(nbytes: int) -> None:
    """Fill freed allocator blocks with NaN so that an output element a kernel never writes shows up as NaN."""
    torch.empty(nbytes // 4 + 1, device=DEVICE).fill_(float("nan"))


def outputs_and_gradients(backend: str, inputs: dict[str, torch.Tensor],
                          grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """The scan's output and the gradient of every input (`d<name>`) for `grad_out`."""
    leaves = {name: t.detach().requires_grad_() for name, t in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=True, backend=backend)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out.to(out.dtype))
    return {"out": out.detach(), **{f"d{name}": g for name, g in zip(leaves, grads)}}


def relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    """||value - expected|| / ||expected||, in float64."""
    return ((value.double() - expected.double()).norm() / expected.double().norm()).item()


def check_parity(shape: ScanShape, dtype: torch.dtype) -> dict[str, Any]:
    """Relative errors of every backend's output and gradients against reference and the float64 recurrence."""
    inputs = scan_inputs(shape, dtype)
    grad_out = torch.randn(inputs["u"].shape, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
    exact = outputs_and_gradients("reference", {k: v.double() for k, v in inputs.items()}, grad_out.double())
    reference = outputs_and_gradients("reference", inputs, grad_out)
    result: dict[str, Any] = {}
    for backend in ("triton", "mamba_ssm"):
        if backend not in SCAN_BACKENDS:
            continue
        poison_cached_memory(8 * inputs["u"].numel() * inputs["u"].element_size())
        measured = outputs_and_gradients(backend, inputs, grad_out)
        errors = {
            key: {
                "vs_reference": relative_error(measured[key], reference[key]),
                "vs_float64": relative_error(measured[key], exact[key]),
                "reference_vs_float64": relative_error(reference[key], exact[key]),
                "all_finite": bool(torch.isfinite(measured[key]).all()),
            }
            for key in exact
        }
        worst = max(e["vs_reference"] for e in errors.values())
        finite = all(e["all_finite"] for e in errors.values())
        # bf16 errors are reported, not judged: rounding the result to bf16 alone costs about 2^-9.
        passed = finite and (dtype != torch.float32 or worst <= FLOAT32_TOLERANCE)
        result[backend] = {"errors": errors, "worst_vs_reference": worst, "passed": passed}
    return result


def median_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds of `fn` (triton.testing.do_bench: 25 ms warm-up, 100 ms of repetitions)."""
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def time_backends(shape: ScanShape, dtype: torch.dtype) -> dict[str, Any]:
    """Median ms of forward and forward+backward for every backend that runs here, and triton's achieved bandwidth."""
    inputs = scan_inputs(shape, dtype)
    leaves = {name: t.detach().requires_grad_() for name, t in inputs.items()}
    grad_out = torch.randn_like(inputs["u"])
    result: dict[str, Any] = {}
    for backend in ("triton", "reference", "mamba_ssm"):
        if backend not in SCAN_BACKENDS:
            continue

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return selective_scan(**inputs, delta_softplus=True, backend=backend)

        def forward_backward() -> tuple[torch.Tensor, ...]:
            out = selective_scan(**leaves, delta_softplus=True, backend=backend)
            return torch.autograd.grad(out, list(leaves.values()), grad_out)

        result[backend] = {"fwd_ms": median_ms(forward), "fwd_bwd_ms": median_ms(forward_backward)}
    # The fewest bytes: forward reads u, delta, z and writes out; backward also reads dout and writes du, ddelta, dz.
    activation = inputs["u"].numel() * inputs["u"].element_size()
    states = 2 * inputs["B"].numel() * inputs["B"].element_size()
    fwd_bytes, bwd_bytes = 4 * activation + states, 7 * activation + 2 * states
    if "triton" in result:
        fwd_ms = result["triton"]["fwd_ms"]
        bwd_ms = result["triton"]["fwd_bwd_ms"] - fwd_ms
        result["triton"]["fwd_GBps"] = fwd_bytes / fwd_ms / 1e6
        result["triton"]["bwd_GBps"] = bwd_bytes / bwd_ms / 1e6 if bwd_ms > 0 else None
    result["fwd_min_bytes"], result["bwd_min_bytes"] = fwd_bytes, bwd_bytes
    return result


def sweep_tiling(shape: ScanShape, dtype: torch.dtype) -> dict[str, Any]:
    """Triton's forward and backward launchers alone at each channels-per-program setting, and how far each
    setting's output and gradients are from the default setting's."""
    inputs = scan_inputs(shape, dtype)
    u, delta, A, B, C, D, z, delta_bias = (inputs[name] for name in GRADIENT_INPUTS)
    dout = torch.randn_like(inputs["u"])

    def forward(config: LaunchConfig) -> torch.Tensor:
        return triton_scan_forward(u, delta, A, B, C, D, z, delta_bias, True, config)

    def backward(config: LaunchConfig) -> list[torch.Tensor]:
        grads = triton_scan_backward(dout, u, delta, A, B, C, D, z, delta_bias, True, config)
        return [grad for grad in grads if grad is not None]

    default = [forward(LaunchConfig()), *backward(LaunchConfig())]
    result = {}
    for block_d in SWEEP_BLOCK_D:
        config = LaunchConfig(block_d=block_d)
        tiled = [forward(config), *backward(config)]
        result[str(block_d)] = {
            "fwd_ms": median_ms(lambda: forward(config)),
            "bwd_ms": median_ms(lambda: backward(config)),
            "max_rel_error_vs_default": max(relative_error(a, b) for a, b in zip(tiled, default)),
        }
    return result


def profile_triton_step(shape: ScanShape) -> dict[str, Any]:
    """Where a triton forward+backward spends its time: device time of each kernel (profiler) against the host's
    time to issue the step; when issuing takes longer than the kernels, the step is bound by the host."""
    inputs = scan_inputs(shape, torch.float32)
    leaves = {name: t.detach().requires_grad_() for name, t in inputs.items()}
    grad_out = torch.randn_like(inputs["u"])

    def step() -> None:
        out = selective_scan(**leaves, delta_softplus=True, backend="triton")
        torch.autograd.grad(out, list(leaves.values()), grad_out)

    iterations = 20
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    issue_start = time.perf_counter()
    for _ in range(iterations):
        step()
    issue_ms = (time.perf_counter() - issue_start) * 1e3 / iterations
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(iterations):
            step()
        torch.cuda.synchronize()
    averages = profiler.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
    kernels = sorted(
        ((event.key, event.self_device_time_total / 1e3 / iterations, event.count // iterations)
         for event in averages if event.device_type == DeviceType.CUDA),
        key=lambda row: -row[1],
    )
    return {
        "host_issue_ms": issue_ms,
        "device_kernels_ms": sum(ms for _, ms, _ in kernels),
        "kernels": [{"name": name[:80], "ms": ms, "calls": calls} for name, ms, calls in kernels[:12]],
    }


def time_compiled_step(shape: ScanShape) -> dict[str, Any]:
    """Forward+backward of the scan under torch.compile(mode="reduce-overhead") (CUDA graphs), per backend."""
    inputs = scan_inputs(shape, torch.float32)
    leaves = {name: t.detach().requires_grad_() for name, t in inputs.items()}
    grad_out = torch.randn_like(inputs["u"])
    result = {}
    for backend in ("triton", "reference"):
        torch._dynamo.reset()
        compiled = torch.compile(
            lambda **kw: selective_scan(**kw, delta_softplus=True, backend=backend), mode="reduce-overhead"
        )

        def step() -> None:
            torch.autograd.grad(compiled(**leaves), list(leaves.values()), grad_out)

        result[backend] = {"fwd_bwd_ms": median_ms(step)}
    return result


def check_compile() -> dict[str, Any]:
    """torch.compile(fullgraph=True) of a function around the scan: eager and compiled outputs and gradients."""
    shape = ScanShape("compile", 8, 2, 64, 16, 8, False, "")
    inputs = scan_inputs(shape, torch.float32)
    grad_out = torch.randn_like(inputs["u"])
    callers: dict[str, Callable[..., torch.Tensor]] = {
        "op": lambda **kw: selective_scan_triton(**kw),
        "selective_scan(backend='auto')": lambda **kw: selective_scan(**kw, backend="auto"),
    }
    result: dict[str, Any] = {}
    for name, call in callers.items():
        def scaled(**kw: Any) -> torch.Tensor:
            return torch.tanh(call(**kw)) * 2.0

        try:
            torch._dynamo.reset()
            eager = _grads(scaled, inputs, grad_out)
            compiled = _grads(torch.compile(scaled, fullgraph=True), inputs, grad_out)
            result[name] = {"ok": True, "max_rel_error": max(relative_error(compiled[k], eager[k]) for k in eager)}
        except Exception as error:  # a graph break under fullgraph=True raises; record it and go on
            result[name] = {"ok": False, "error": f"{type(error).__name__}: {str(error)[:800]}"}
    return result


def _grads(fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor],
           grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
    leaves = {name: t.detach().requires_grad_() for name, t in inputs.items()}
    out = fn(**leaves, delta_softplus=True)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    return {"out": out.detach(), **{f"d{name}": g for name, g in zip(leaves, grads)}}


def time_experts_step(shape: ScanShape) -> dict[str, Any]:
    """Forward+backward of MambaExperts (one layer, all experts batched) with each scan backend, float32."""
    d_model = shape.channels // 2
    x = torch.randn(shape.groups, shape.batch, shape.length, d_model, device=DEVICE)
    result = {}
    for backend in ("triton", "reference"):
        experts = MambaExperts(shape.groups, d_model=d_model, d_state=shape.dstate, scan_backend=backend).to(DEVICE)
        parameters = list(experts.parameters())

        def step() -> None:
            experts(x).square().mean().backward()

        result[backend] = {"fwd_bwd_ms": _median_ms_zeroing(step, parameters)}
    return result


def _median_ms_zeroing(fn: Callable[[], None], parameters: Sequence[torch.Tensor]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=parameters, return_mode="median")


def copy_bandwidth_GBps() -> float:
    """The device-to-device copy ceiling, counting bytes read plus written (1 GiB each way)."""
    src = torch.randn(2**28, device=DEVICE)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_ms(lambda: dst.copy_(src)) / 1e6


def environment() -> dict[str, Any]:
    """The GPU, software versions, scan backends and the tolerance the parity checks use."""
    return {
        "device": torch.cuda.get_device_name(),
        "sm_count": torch.cuda.get_device_properties(0).multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "scan_backends": scan_backend_names(),
        "float32_tolerance": FLOAT32_TOLERANCE,
        "triton_default_block_d": LaunchConfig().block_d,
    }


def print_table(report: dict[str, Any]) -> None:
    """Parity, timings, compile checks, profiles and the tiling sweep, as a short text summary."""
    print("\nparity (worst relative error of out and all 8 gradients; triton vs reference)")
    for shape, by_dtype in report.get("parity", {}).items():
        for dtype, result in by_dtype.items():
            if "triton" in result:
                r = result["triton"]
                print(f"  {shape:18s} {dtype:9s} {r['worst_vs_reference']:.2e}  {'ok' if r['passed'] else 'FAIL'}")
            else:
                print(f"  {shape:18s} {dtype:9s} {result}")
    print("\ntimes (median ms): backend fwd / fwd+bwd")
    for shape, by_dtype in report.get("timing", {}).items():
        for dtype, result in by_dtype.items():
            row = "  ".join(
                f"{b} {r['fwd_ms']:.3f} / {r['fwd_bwd_ms']:.3f}" for b, r in result.items() if isinstance(r, dict)
            )
            print(f"  {shape:10s} {dtype:9s} {row}")
    for name, result in report.get("compile", {}).items():
        print(f"compile fullgraph {name}: {result}")
    print(f"experts step: {report.get('experts_step')}")
    print(f"compiled scan step (reduce-overhead): {report.get('compiled_step')}")
    for name, result in report.get("profile", {}).items():
        host, kernels = result["host_issue_ms"], result["device_kernels_ms"]
        print(f"profile {name}: host issues a step in {host:.3f} ms, its kernels run {kernels:.3f} ms")
    print(f"tiling sweep: {report.get('sweep')}")
    if report.get("failures"):
        print(f"section failures: {list(report['failures'])}")


def main(argv: list[str] | None = None) -> int:
    """Run every section on the GPU, rewriting the JSON report after each; 2 when there is no CUDA device."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.scan_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the JSON report (default: benchmarks/results/scan_<device>.json)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or triton is None:
        print("scan_bench needs a CUDA device and Triton; run it on the GPU machine", file=sys.stderr)
        return 2
    out: Path = args.out or RESULTS_DIR / f"scan_{device_slug(torch.device(DEVICE), vendor=False)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"shapes": [asdict(s) for s in SHAPES], "failures": {}}
    started = time.perf_counter()

    def section(name: str, fill: Callable[[], None]) -> None:
        section_start = time.perf_counter()
        try:
            fill()
        except Exception:  # keep the other sections' numbers: the device time for a rerun is scarce
            report["failures"][name] = traceback.format_exc()[-3000:]
            print(report["failures"][name], file=sys.stderr)
        report.setdefault("section_seconds", {})[name] = round(time.perf_counter() - section_start, 1)
        out.write_text(json.dumps(report, indent=1))
        print(f"[{time.perf_counter() - started:6.1f}s] {name} done", flush=True)

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    section("environment", lambda: report.update(environment=environment(), copy_GBps=copy_bandwidth_GBps()))
    report["parity"] = {s.name: {} for s in SHAPES}
    for shape in SHAPES:
        for dtype_name, dtype in dtypes.items():
            section(f"parity {shape.name} {dtype_name}",
                    lambda: report["parity"][shape.name].update({dtype_name: check_parity(shape, dtype)}))
    section("compile", lambda: report.update(compile=check_compile()))
    report["timing"] = {s.name: {} for s in SHAPES if s.timed}
    for shape in (s for s in SHAPES if s.timed):
        for dtype_name, dtype in dtypes.items():
            section(f"timing {shape.name} {dtype_name}",
                    lambda: report["timing"][shape.name].update({dtype_name: time_backends(shape, dtype)}))
    report["sweep"] = {}
    for shape in (s for s in SHAPES if s.name in ("small-L8", "moe16")):
        section(f"sweep {shape.name}",
                lambda: report["sweep"].update({shape.name: sweep_tiling(shape, torch.float32)}))
    report["experts_step"] = {}
    for shape in (s for s in SHAPES if s.name in ("small-L8", "moe16")):
        section(f"experts step {shape.name}",
                lambda: report["experts_step"].update({shape.name: time_experts_step(shape)}))
    report["profile"] = {}
    for shape in (s for s in SHAPES if s.name in ("small-L8", "moe16")):
        section(f"profile {shape.name}",
                lambda: report["profile"].update({shape.name: profile_triton_step(shape)}))
    report["compiled_step"] = {}
    for shape in (s for s in SHAPES if s.name in ("small-L8", "moe16")):
        section(f"compiled step {shape.name}",
                lambda: report["compiled_step"].update({shape.name: time_compiled_step(shape)}))
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(report, indent=1))
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
