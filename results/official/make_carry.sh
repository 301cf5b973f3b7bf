#!/bin/bash
# Makes the folder run_weather_on_device.sh carries to an offline GPU machine (Python 3.12 image with torch):
#   bash results/official/make_carry.sh OFFICIAL_GIT_DIR [OUT_DIR]      e.g. ... /path/to/MixMamba/.git .carry18
# OFFICIAL_GIT_DIR: a clone of github.com/KhaledAlkilane89/MixMamba (its git directory); commit ee2fe4b is exported.
# Needs a package index here (pip download) and this checkout's .venv (mamba-ssm's setup.py imports torch even to
# describe itself; PYTHON overrides it); about 9 MB in all.
set -euo pipefail
SRC=${1:?usage: make_carry.sh OFFICIAL_GIT_DIR [OUT_DIR]}
OUT=${2:-.carry18}
rm -rf "$OUT"; mkdir -p "$OUT/official" "$OUT/sdist"
git --git-dir "$SRC" archive ee2fe4b | tar x -C "$OUT/official" --exclude=img
MAMBA_SKIP_CUDA_BUILD=TRUE "${PYTHON:-.venv/bin/python}" -m pip download -q --no-deps --no-build-isolation --no-binary :all: \
  -d "$OUT/sdist" mamba-ssm==2.3.2.post1
PLATFORMS=""
for p in manylinux1 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_28 manylinux_2_31 manylinux_2_34; do
  PLATFORMS="$PLATFORMS --platform ${p}_x86_64"; done
ALL=$(mktemp -d)
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS --platform any \
  -d "$ALL" "transformers<5" pyyaml tqdm requests einops beartype==0.18.5 colt5-attention==0.11.0 \
  local-attention==1.9.1 ninja
# torch and what it brings are in the image; hf_xet serves only hub downloads.
ls "$ALL"/*.whl | grep -v -E "/(torch|nvidia_[a-z0-9_]+|triton|numpy|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|typing_extensions|setuptools|hf_xet)-" > "$ALL/keep.txt"
python3 -m pip install -q --no-deps --no-compile --target "$ALL/tree" --python-version 3.12 --implementation cp \
  $PLATFORMS --only-binary=:all: $(cat "$ALL/keep.txt")
find "$ALL/tree/bin" -type f ! -name ninja -delete
tar cJf "$OUT/site18.tar.xz" -C "$ALL/tree" .
rm -rf "$ALL"
du -sh "$OUT"
