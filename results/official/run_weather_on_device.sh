#!/bin/bash
# Issue 18 on one H200, from the repo root, in one `device` call: mamba-ssm built for sm_90 from its PyPI source
# (or reused from an earlier call on a warm machine), then the official MixMamba code and ours on weather (pred_len
# $PRED, default 96), seeds $SEEDS all at once (default 2021). Give each call one seed: an official run alone took
# 342 s on the H200 (five 34 s epochs and its 170 s batch-1 test), and three at once took 95 s per epoch, so none
# finished in a call. Carry .carry17 (data/: weather/weather.csv) and .carry18, made where a package index is
# reachable by
#   bash results/official/make_carry.sh <git dir of KhaledAlkilane89/MixMamba> .carry18
# OFFICIAL_EXTRA / OURS_EXTRA: more flags, e.g. "--train-epochs 1 --skip-test" / "--epochs 1" for a smoke run.
# Each run is stopped (writing what it has, "cut") at DEADLINE (default 570) seconds after the start or after LIMIT
# seconds, whichever comes first. Everything comes back as $OUT/weather.tar.gz.
PRED=${PRED:-96}; SEEDS=${SEEDS:-2021}
KERNELS="mamba_ssm"
source results/official/device_setup.sh
LEFT=$(( ${DEADLINE:-570} - ($(date +%s) - START) ))
LIMIT=${LIMIT:-$LEFT}; (( LIMIT > LEFT )) && LIMIT=$LEFT
(( LIMIT > 0 )) || { echo "no time left for the runs after the setup ($LEFT s)"; exit 1; }
echo "runs start at $(( $(date +%s) - START )) s, each stopped after $LIMIT s"
for SEED in $SEEDS; do
  timeout -k 20 $LIMIT python3 -m benchmarks.speed.official_compare official --official-dir .carry18/official \
    --scratch /tmp/official-$SEED --data-dir .carry17/data --dataset weather --pred-len $PRED --seed $SEED \
    --out $OUT/official_weather_${PRED}_$SEED.json $OFFICIAL_EXTRA > $OUT/logs/official-$SEED.txt 2>&1 &
  timeout -k 20 $LIMIT python3 -m benchmarks.speed.official_compare ours --data-dir .carry17/data \
    --dataset weather --pred-len $PRED --seed $SEED --out $OUT/ours_weather_${PRED}_$SEED.json $OURS_EXTRA \
    > $OUT/logs/ours-$SEED.txt 2>&1 &
done
wait
for f in $OUT/logs/official-*.txt $OUT/logs/ours-*.txt; do echo "== $f"; tail -4 $f; done
echo "all done at $(( $(date +%s) - START )) s"
tar czf /tmp/weather.tar.gz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/weather.tar.gz "$OUT"/
