#!/bin/bash
# Builds a bundle for a GPU machine that cannot reach a package index but already has PyTorch, numpy, pandas,
# pyarrow and matplotlib (an NVIDIA PyTorch image): the given requirements and their needs, minus what the image
# has, plus install.sh, which unpacks them on that machine under /tmp/site (add it to PYTHONPATH, /tmp/site/bin to
# PATH). Without requirements: Ray, Optuna and MLflow at the versions this checkout's .venv uses and what `mixbench`
# imports. Everything is installed into one tree, trimmed and xz-compressed: about 46 MB for Ray 2.60 + MLflow 3.17 +
# Optuna 5.1.
#   bash cluster/offline-wheels.sh OUT_DIR [PYTHON_VERSION [REQUIREMENT ...]]     e.g. bash cluster/offline-wheels.sh .whl 3.12
set -euo pipefail
OUT=${1:?usage: offline-wheels.sh OUT_DIR [PYTHON_VERSION [REQUIREMENT ...]]}
PYVER=${2:-3.12}
shift $(( $# < 2 ? $# : 2 ))
if [ $# -eq 0 ]; then
  PIP=${PIP:-.venv/bin/pip}
  pin() { "$PIP" show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
  RAY=$(pin ray); OPTUNA=$(pin optuna); MLFLOW=$(pin mlflow)
  [ -n "$RAY" ] && [ -n "$OPTUNA" ] && [ -n "$MLFLOW" ] || { echo "install the project first (pip install -e .)"; exit 2; }
  set -- "ray[tune,default]==$RAY" "optuna==$OPTUNA" "mlflow==$MLFLOW" huggingface_hub click pyyaml tqdm safetensors
fi
PLATFORMS=""
for p in manylinux1 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
         manylinux_2_34; do PLATFORMS="$PLATFORMS --platform ${p}_x86_64"; done
ALL=$(mktemp -d)
python3 -m pip download -q --only-binary=:all: --python-version "$PYVER" --implementation cp $PLATFORMS \
  --platform any -d "$ALL" "$@"
# Already in the image (PyTorch, what it brings, and the scientific stack), or never imported here (ray's virtualenv
# and py-spy serve runtime_env and the dashboard's profiler; scikit-learn and scipy serve mlflow's model flavours;
# hf_xet only hub downloads).
SKIP='(torch|nvidia_[a-z0-9_]+|cuda_bindings|cuda_pathfinder|triton|sympy|mpmath|networkx|setuptools'
SKIP+='|numpy|pandas|pyarrow|scipy|scikit_learn|joblib|threadpoolctl|matplotlib|pillow|fonttools|kiwisolver'
SKIP+='|contourpy|cycler|pyparsing|python_dateutil|six|tzdata|pytz|jinja2|markupsafe|filelock|fsspec'
SKIP+='|typing_extensions|virtualenv|distlib|python_discovery|py_spy|hf_xet)-'
TREE="$ALL/tree"
ls "$ALL"/*.whl | grep -v -E "/$SKIP" > "$ALL/keep.txt"
python3 -m pip install -q --no-deps --no-compile --target "$TREE" --python-version "$PYVER" --implementation cp \
  $PLATFORMS --only-binary=:all: $(cat "$ALL/keep.txt")
# Parts nothing here loads: Ray's Java jars and RLlib/Serve/LLM libraries, MLflow's web UI, source maps, console
# scripts (but ninja's binary, which builds CUDA extensions); debug symbols stripped from the native libraries.
rm -rf "$TREE"/ray/{jars,rllib,serve,llm} "$TREE/mlflow/server/js/build"
find "$TREE/bin" -type f ! -name ninja -delete 2>/dev/null || true
find "$TREE" -name '*.js.map' -delete
find "$TREE" -type f \( -name '*.so' -o -path '*/ray/core/src/ray/*' \) -exec strip --strip-unneeded {} + 2>/dev/null || true
mkdir -p "$OUT"
tar cJf "$OUT/site.tar.xz" -C "$TREE" .
cat > "$OUT/install.sh" <<'EOF2'
#!/bin/bash
# Unpacks this bundle into /tmp/site without an index; then: export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
set -euo pipefail
mkdir -p /tmp/site
tar xJf "$(dirname "$0")/site.tar.xz" -C /tmp/site
EOF2
rm -rf "$ALL"
du -sh "$OUT"
