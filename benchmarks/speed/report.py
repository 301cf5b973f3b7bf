"""What every speed benchmark's JSON says about where it ran (device name, file-name slug, software versions) and
where it goes: benchmarks/results/."""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

try:
    import triton
except ImportError:  # optional: CUDA installs have it
    triton = None

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that host clocks time it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo (falling back to the platform's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), flags=re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def device_slug(device: torch.device, *, vendor: bool = True) -> str:
    """`cpu`, or the GPU's name in lower-case words joined by dashes: nvidia-h200 (h200 without `vendor`)."""
    if device.type != "cuda":
        return "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")
    return slug if vendor else slug.removeprefix("nvidia-")


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and software versions the numbers belong to."""
    info: dict[str, Any] = {
        "device_type": device.type, "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "triton": _triton_version(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(device=properties.name, cuda=torch.version.cuda, multiprocessors=properties.multi_processor_count,
                    memory_gb=round(properties.total_memory / 1e9, 1), driver=_driver_version())
    else:
        info["device"] = platform.processor() or platform.machine()
    return info


def write_json(path: Path, value: Any) -> None:
    """Write `value` as indented JSON (anything JSON cannot hold as its string), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


def _triton_version() -> str | None:
    return None if triton is None else str(triton.__version__)


def _driver_version() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
