#!/bin/bash
# Issue 18 on one H200, from the repo root, in one `device` call: causal-conv1d and mamba-ssm built for sm_90 from
# their PyPI sources, then, each alone on the GPU: the block parity with all three mamba_ssm paths (kernel_parity
# --sections block), the official code's and ours ms/step on weather-96 and ETTh1-192 (official_compare speed,
# with and without causal_conv1d), the GPU parity tests, and s/epoch alone on weather-96 (2 epochs of each).
# Carry .carry17 (data/) and .carry18 (results/official/make_carry.sh). Everything comes back as $OUT/kernels.tar.gz.
# A step starts only while DEADLINE (default 540) seconds have not passed, so the call ends inside its 600 s.
KERNELS="mamba_ssm causal_conv1d"
source results/official/device_setup.sh
DEADLINE=${DEADLINE:-540}
step() {  # step NAME SECONDS COMMAND...: run COMMAND under a timeout, log it, unless the deadline is near
  local name=$1 limit=$2; shift 2
  local left=$(( DEADLINE - ($(date +%s) - START) ))
  if (( left < 30 )); then echo "skipped $name: ${left} s left"; return; fi
  (( limit > left )) && limit=$left
  local began=$(date +%s)
  timeout -k 10 $limit "$@" > $OUT/logs/$name.txt 2>&1
  echo "$name: rc $? in $(( $(date +%s) - began )) s (at $(( $(date +%s) - START )) s)"
}
step block-parity 120 python3 -m benchmarks.speed.kernel_parity --sections block --out $OUT/kernel_parity_block.json
for case in "weather 96" "ETTh1 192"; do
  set -- $case
  step speed-$1 120 python3 -m benchmarks.speed.official_compare speed --official-dir .carry18/official \
    --scratch /tmp/speed-$1 --data-dir .carry17/data --dataset $1 --pred-len $2 --out $OUT/speed_$1_$2.json
done
step pytest-parity 150 python3 -m pytest -q -p no:cacheprovider tests/mixmamba/test_mamba_ssm_parity.py
common="--data-dir .carry17/data --dataset weather --pred-len 96 --seed 2021"
step epoch-official 90 python3 -m benchmarks.speed.official_compare official --official-dir .carry18/official \
  --scratch /tmp/epoch-official $common --train-epochs 2 --skip-test --out $OUT/epoch_official_weather_96.json
step epoch-official-cc 90 python3 -m benchmarks.speed.official_compare official --official-dir .carry18/official \
  --scratch /tmp/epoch-official-cc $common --causal-conv1d --train-epochs 2 --skip-test \
  --out $OUT/epoch_official_cc_weather_96.json
step epoch-ours 60 python3 -m benchmarks.speed.official_compare ours $common --epochs 2 --out $OUT/epoch_ours_weather_96.json
step epoch-ours-bf16 60 python3 -m benchmarks.speed.official_compare ours $common --epochs 2 --bf16 \
  --out $OUT/epoch_ours_bf16_weather_96.json
tail -3 $OUT/logs/pytest-parity.txt
echo "all done at $(( $(date +%s) - START )) s"
tar czf /tmp/kernels.tar.gz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/kernels.tar.gz "$OUT"/
