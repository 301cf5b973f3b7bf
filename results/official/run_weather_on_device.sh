#!/bin/bash
# Issue 18 on one H200, from the repo root, in one `device` call: mamba-ssm built for sm_90 from its PyPI source,
# then the official MixMamba code and ours on weather (pred_len $PRED, default 96), seeds $SEEDS all at once.
# Carry .carry17 (data/: weather/weather.csv) and .carry18, made where a package index is reachable by
#   bash results/official/make_carry.sh <git dir of KhaledAlkilane89/MixMamba> .carry18
# (the official tree at ee2fe4b, the mamba-ssm 2.3.2.post1 sdist, and an 8 MB bundle of what the image lacks:
# transformers<5, einops, the official requirements beartype/colt5-attention/local-attention, ninja).
# OFFICIAL_EXTRA / OURS_EXTRA: more flags, e.g. "--train-epochs 1 --skip-test" / "--epochs 1" for a smoke run.
START=$(date +%s); PRED=${PRED:-96}; SEEDS=${SEEDS:-2021 2022 2023}
mkdir -p $OUT/logs
bash .carry18/site/install.sh
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/logs/pip.txt 2>&1 || tail -5 $OUT/logs/pip.txt
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/logs/machine.txt
# the official data loaders import scikit-learn, which this carry lacks (with scipy, 44 MB of wheels)
python3 -c "import sklearn; print('scikit-learn', sklearn.__version__)" >> $OUT/logs/machine.txt 2>&1
# nproc honours OMP_NUM_THREADS, which the image sets low: name the cores.
MAX_JOBS=$(grep -c ^processor /proc/cpuinfo) SDIST_DIR=.carry18/sdist PACKAGES=mamba_ssm \
  bash cluster/build-mamba-kernels.sh 90 /tmp/mamba-wheels > $OUT/logs/build.txt 2>&1 || { tail -30 $OUT/logs/build.txt; exit 1; }
cp /tmp/mamba-wheels/build-times.json $OUT/ 2>/dev/null; ls -l /tmp/mamba-wheels >> $OUT/logs/build.txt
python3 -m pip install -q --no-deps /tmp/mamba-wheels/mamba_ssm-*.whl > $OUT/logs/pip-mamba.txt 2>&1
python3 -c "import mamba_ssm; print('mamba_ssm', mamba_ssm.__version__)" || exit 1
echo "built and installed at $(( $(date +%s) - START )) s"
for SEED in $SEEDS; do
  timeout -k 20 ${LIMIT:-500} python3 -m benchmarks.speed.official_compare official --official-dir .carry18/official \
    --scratch /tmp/official-$SEED --data-dir .carry17/data --dataset weather --pred-len $PRED --seed $SEED \
    --out $OUT/official_weather_${PRED}_$SEED.json $OFFICIAL_EXTRA > $OUT/logs/official-$SEED.txt 2>&1 &
  timeout -k 20 ${LIMIT:-500} python3 -m benchmarks.speed.official_compare ours --data-dir .carry17/data \
    --dataset weather --pred-len $PRED --seed $SEED --out $OUT/ours_weather_${PRED}_$SEED.json $OURS_EXTRA \
    > $OUT/logs/ours-$SEED.txt 2>&1 &
done
wait
for f in $OUT/logs/official-*.txt $OUT/logs/ours-*.txt; do echo "== $f"; tail -4 $f; done
echo "all done at $(( $(date +%s) - START )) s"
