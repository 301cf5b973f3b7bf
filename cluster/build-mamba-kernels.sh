#!/usr/bin/env bash
# Build causal-conv1d and mamba-ssm wheels from their PyPI source distributions for ONE GPU architecture, offline.
#
#   cluster/build-mamba-kernels.sh [ARCH] [OUT_DIR]
#
#   ARCH     compute capability without the dot: 90 (Hopper: H100/H200, the default), 80 (A100), 86, 89 (L4/L40S),
#            100 (B200), 120; a suffix such as 90a is passed through.
#   OUT_DIR  where the two wheels and build-times.json go (default: ./mamba-wheels).
#
# Environment:
#   SDIST_DIR  folder holding mamba_ssm-*.tar.gz and causal_conv1d-*.tar.gz (default: ./sdist). Fetch them once,
#              on a machine with network access (the SKIP variables keep pip's metadata step from compiling):
#                MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE python -m pip download --no-deps \
#                  --no-build-isolation --no-binary :all: -d sdist mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
#   PYTHON     the interpreter whose torch (with CUDA) the extensions are built against (default: python3).
#   MAX_JOBS   parallel nvcc processes per package (default: the number of cores).
#   PARALLEL   1 (default) builds both packages at once; 0 one after the other.
#   PACKAGES   which to build: "causal_conv1d mamba_ssm" (default), or one of them.
#   BUILD_DIR  scratch folder (default: a new temporary folder, removed afterwards).
#   SPLIT_COMPILE  threads for one causal-conv1d source's optimizer (nvcc --split-compile; default 0: every core).
#              causal-conv1d has 4 sources and causal_conv1d_bwd.cu is nearly all of its build (alone on 2 cores,
#              nvcc 13.0, sm_90: bwd 240 s, fwd 13 s, update 5 s), so more nvcc processes cannot help; splitting that
#              file's cicc/ptxas work over threads does (bwd 187 s on the same 2 cores). mamba-ssm's 10 sources
#              already fill the cores.
#
# Why the edit: both setup.py files hard-code their -gencode list (sm_75 ... sm_121 with CUDA 13), and torch's
# TORCH_CUDA_ARCH_LIST is ignored once a -gencode flag is present, so a build for one GPU means narrowing that list.
# This script replaces the list with "-gencode arch=compute_ARCH,code=sm_ARCH" in a scratch copy of each sdist
# (nothing else in the sources changes) and builds with MAMBA_FORCE_BUILD=TRUE / CAUSAL_CONV1D_FORCE_BUILD=TRUE,
# so that setup.py does not try to download a prebuilt wheel from GitHub (which fails offline), and with
# --no-build-isolation --no-index, so that pip uses the installed torch and fetches nothing. Needs nvcc (CUDA_HOME
# or on PATH) of the torch build's CUDA major version, and setuptools, wheel, packaging and ninja.
#
# Install the wheels without their declared dependencies (mamba-ssm 2.3.2 declares tilelang, apache-tvm-ffi and
# quack-kernels, which only its Mamba-3 kernels use):
#   python -m pip install --no-deps OUT_DIR/*.whl     # then `import mamba_ssm` needs einops and transformers
set -euo pipefail

ARCH="${1:-90}"
OUT_DIR="${2:-mamba-wheels}"
SDIST_DIR="${SDIST_DIR:-sdist}"
PYTHON="${PYTHON:-python3}"
MAX_JOBS="${MAX_JOBS:-$(nproc)}"
PARALLEL="${PARALLEL:-1}"
PACKAGES="${PACKAGES:-causal_conv1d mamba_ssm}"
SPLIT_COMPILE="${SPLIT_COMPILE:-0}"

if [[ ! "$ARCH" =~ ^[0-9]{2,3}[a-z]?$ ]]; then
    echo "build-mamba-kernels.sh: ARCH '$ARCH' is not a compute capability; give it without the dot, e.g. 90" >&2
    exit 2
fi
shopt -s nullglob
mamba_sdists=("$SDIST_DIR"/mamba_ssm-*.tar.gz)
conv_sdists=("$SDIST_DIR"/causal_conv1d-*.tar.gz)
shopt -u nullglob
wants() { [[ " $PACKAGES " == *" $1 "* ]]; }
if ! wants causal_conv1d && ! wants mamba_ssm; then
    echo "build-mamba-kernels.sh: PACKAGES='$PACKAGES' names neither causal_conv1d nor mamba_ssm" >&2
    exit 2
fi
if { wants mamba_ssm && [[ ${#mamba_sdists[@]} -ne 1 ]]; } ||
   { wants causal_conv1d && [[ ${#conv_sdists[@]} -ne 1 ]]; }; then
    echo "build-mamba-kernels.sh: need exactly one mamba_ssm-*.tar.gz and one causal_conv1d-*.tar.gz in" \
         "SDIST_DIR=$SDIST_DIR; fetch them with the pip download command in this script's header" >&2
    exit 2
fi
if ! command -v nvcc >/dev/null 2>&1 && [[ -z "${CUDA_HOME:-}" ]]; then
    echo "build-mamba-kernels.sh: nvcc not found; put CUDA's bin folder on PATH or set CUDA_HOME" >&2
    exit 2
fi

mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
if [[ -n "${BUILD_DIR:-}" ]]; then
    mkdir -p "$BUILD_DIR"
    WORK="$(cd "$BUILD_DIR" && pwd)"
else
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
fi

# Replace every hard-coded -gencode pair of setup.py by one for $ARCH; fail loudly if the layout is not the expected.
narrow_gencode() {
    "$PYTHON" - "$1" "$ARCH" <<'EOF'
import pathlib
import re
import sys

path, arch = pathlib.Path(sys.argv[1]), sys.argv[2]
text = path.read_text()
flag = re.compile(
    r'^(?P<indent>[ \t]*)cc_flag\.append\("(?:-gencode|arch=compute_\w+,code=(?:sm|compute)_\w+)"\)[ \t]*$', re.M
)
text, removed = flag.subn(lambda m: m.group("indent") + "pass  # -gencode narrowed by build-mamba-kernels.sh", text)
anchor = re.compile(r'^(?P<indent>[ \t]*)cc_flag = \[\][ \t]*$', re.M)
match = anchor.search(text)
if removed == 0 or match is None:
    sys.exit(f"{path}: no hard-coded -gencode list found (removed {removed}); the sdist layout changed")
flags = f'["-gencode", "arch=compute_{arch},code=sm_{arch}"]'
line = f'{match.group("indent")}cc_flag += {flags}  # build-mamba-kernels.sh\n'
text = text[: match.end()] + "\n" + line + text[match.end() + 1:]
compile(text, str(path), "exec")
path.write_text(text)
kept = re.findall(r"arch=compute_\w+,code=sm_\w+", text)
print(f"{path.parent.name}: removed {removed // 2} -gencode pairs, building only {kept}")
EOF
}

# build_one NAME SDIST JOBS: unpack, narrow, build the wheel into $OUT_DIR, log to $OUT_DIR/NAME.log (verbose: ninja's
# [n/N] lines show which source is compiling), time it.
build_one() {
    local name="$1" sdist="$2" jobs="$3"
    local src="$WORK/$name"
    mkdir -p "$src"
    tar -xzf "$sdist" -C "$src" --strip-components=1
    narrow_gencode "$src/setup.py"
    local began=$SECONDS append=""
    if [[ "$name" == causal_conv1d ]]; then append="--split-compile=$SPLIT_COMPILE"; fi
    if NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-}${NVCC_APPEND_FLAGS:+ }$append" MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS="$jobs" \
        "$PYTHON" -m pip wheel --verbose --no-deps --no-build-isolation --no-index --no-cache-dir -w "$OUT_DIR" "$src" \
        >"$OUT_DIR/$name.log" 2>&1; then
        echo "$name $((SECONDS - began)) ok" >"$WORK/$name.time"
    else
        echo "$name $((SECONDS - began)) failed" >"$WORK/$name.time"
        tail -n 30 "$OUT_DIR/$name.log" >&2
    fi
}

echo "building for sm_$ARCH with MAX_JOBS=$MAX_JOBS (parallel=$PARALLEL) into $OUT_DIR"
started=$SECONDS
if [[ "$PARALLEL" == 1 ]]; then
    # causal-conv1d has 4 sources, mamba-ssm 10: each gets as many nvcc processes as it has files, up to MAX_JOBS.
    pids=()
    if wants causal_conv1d; then
        build_one causal_conv1d "${conv_sdists[0]}" "$(( MAX_JOBS < 4 ? MAX_JOBS : 4 ))" &
        pids+=($!)
    fi
    if wants mamba_ssm; then
        build_one mamba_ssm "${mamba_sdists[0]}" "$MAX_JOBS" &
        pids+=($!)
    fi
    wait "${pids[@]}" || true
else
    if wants causal_conv1d; then build_one causal_conv1d "${conv_sdists[0]}" "$MAX_JOBS"; fi
    if wants mamba_ssm; then build_one mamba_ssm "${mamba_sdists[0]}" "$MAX_JOBS"; fi
fi
total=$((SECONDS - started))

"$PYTHON" - "$OUT_DIR" "$ARCH" "$total" "$MAX_JOBS" "$PARALLEL" \
    "$WORK/causal_conv1d.time" "$WORK/mamba_ssm.time" <<'EOF'
import json
import os
import pathlib
import platform
import subprocess
import sys

out, arch, total, jobs, parallel, *time_files = sys.argv[1:]
report = {"arch": f"sm_{arch}", "total_seconds": int(total), "max_jobs": int(jobs), "parallel": parallel == "1",
          "cpus": os.cpu_count(), "host": platform.node(), "packages": {}}
try:
    import torch
    report["torch"] = torch.__version__
    report["torch_cuda"] = torch.version.cuda
except ImportError:
    pass
try:
    version = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    report["nvcc"] = version.strip().splitlines()[-1]
except OSError:
    pass
for time_file in time_files:
    path = pathlib.Path(time_file)
    if not path.exists():
        continue
    name, seconds, status = path.read_text().split()
    wheels = sorted(pathlib.Path(out).glob(f"{name}-*.whl"))
    report["packages"][name] = {
        "status": status, "seconds": int(seconds),
        "wheel": wheels[-1].name if wheels else None,
        "wheel_bytes": wheels[-1].stat().st_size if wheels else None,
    }
pathlib.Path(out, "build-times.json").write_text(json.dumps(report, indent=2) + "\n")
for name, entry in report["packages"].items():
    size = f"{entry['wheel_bytes'] / 1e6:.1f} MB" if entry["wheel_bytes"] else "no wheel"
    print(f"{name}: {entry['status']} in {entry['seconds']} s, {entry['wheel']} ({size})")
print(f"total {total} s for sm_{arch}; report in {out}/build-times.json")
sys.exit(0 if report["packages"] and all(e["status"] == "ok" for e in report["packages"].values()) else 1)
EOF
