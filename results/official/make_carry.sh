#!/bin/bash
# Makes the folder .carry18 that the device scripts beside it (device_setup.sh) carry to an offline GPU machine
# (Python 3.12 image with torch):
#   bash results/official/make_carry.sh OFFICIAL_GIT_DIR [OUT_DIR]      e.g. ... /path/to/MixMamba/.git .carry18
# OFFICIAL_GIT_DIR: a clone of github.com/KhaledAlkilane89/MixMamba (its git directory); commit ee2fe4b is exported.
# Needs a package index here (pip download) and this checkout's .venv (mamba-ssm's setup.py imports torch even to
# describe itself; PYTHON overrides it); about 8 MB in all.
set -euo pipefail
SRC=${1:?usage: make_carry.sh OFFICIAL_GIT_DIR [OUT_DIR]}
OUT=${2:-.carry18}
rm -rf "$OUT"; mkdir -p "$OUT/official" "$OUT/sdist"
git --git-dir "$SRC" archive ee2fe4b | tar x -C "$OUT/official" --exclude=img
MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE "${PYTHON:-.venv/bin/python}" -m pip download -q --no-deps \
  --no-build-isolation --no-binary :all: -d "$OUT/sdist" mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
# What the image lacks: transformers<5 (mamba_ssm imports its generation outputs, gone in 5), einops, the official
# requirements beartype, colt5-attention and local-attention, ninja for the build, and pytest for the GPU tests.
bash cluster/offline-wheels.sh "$OUT/site" 3.12 "transformers<5" pyyaml tqdm requests einops beartype==0.18.5 \
  colt5-attention==0.11.0 local-attention==1.9.1 ninja pytest pytest-timeout
du -sh "$OUT"
