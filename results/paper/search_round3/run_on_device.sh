#!/bin/bash
# How round 3 ran (issue 22, session 7), one `device` call per line below, from the repo root on an H200 machine
# (carry .carry17: the weather/ETTh1 CSVs as data/; .whl17: `bash cluster/offline-wheels.sh .whl17 3.12`):
#   LIMIT=450 BUDGET=270 bash results/paper/search_round3/run_on_device.sh
#   TAG=-lookbacks EXTRA="--search-seq-len 96,192,336,512" LIMIT=450 BUDGET=270 bash results/paper/search_round3/run_on_device.sh
#   DATASET=weather HORIZONS=96 SHARE=0.25 TRIALS=48 LIMIT=540 BUDGET=430 bash results/paper/search_round3/run_on_device.sh
#   DATASET=weather HORIZONS="96 192" LIMIT=545 BUDGET=300 bash results/paper/search_round3/run_on_device.sh   (session 8)
#   DATASET=weather HORIZONS="336 720" LIMIT=545 BUDGET=300 bash results/paper/search_round3/run_on_device.sh  (session 8)
# Then, here: mixbench export --searches --tracking-uri sqlite:///<each mlflow-H.db> --output <its CSV>.
# Issue 22 device call: MixMamba searches on ETTh1, lookback 96, horizons in $HORIZONS, all at once on one H200
# (one local Ray runtime per horizon, each with half the GPU in 0.5 shares = 2 fused groups at a time), each
# configuration trained with 3 seeds and ranked on their mean validation loss, the recipe's configuration first;
# then the chosen configuration refit with 3 seeds (full epochs, every test window). Carry .carry17 .whl17.
source results/paper/search_round3/device_setup.sh
echo "setup done at $(( $(date +%s) - START )) s"
R=/tmp/r22; rm -rf $R; mkdir -p $R
PIDS=()
for H in ${HORIZONS:-96 192 336 720}; do
  ( cd $R && timeout -k 20 ${LIMIT:-480} python3 $ROOT/cli.py search --dataset ${DATASET:-ETTh1} --model mixmamba --pred-len $H \
      --trials ${TRIALS:-40} --epochs ${EPOCHS:-10} --config-seeds ${SEEDS:-3} --gpus-per-trial ${SHARE:-0.5} \
      --cpus-per-trial 2 --time-budget ${BUDGET:-300} --refit-seeds 3 --seed 2021 \
      --name ${DATASET:-ETTh1}${TAG}-$H ${EXTRA} --tracking-uri sqlite:///$R/mlflow-$H.db --storage-path $R/ray \
      > $OUT/logs/search-$H.txt 2>&1; echo "search $H rc=$? at $(( $(date +%s) - START )) s" >> $OUT/logs/done.txt ) &
  PIDS+=($!)
  sleep 8
done
( while true; do sleep 30; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader \
    | sed "s/^/$(( $(date +%s) - START )) s /" >> $OUT/logs/gpu_util.txt; done ) &
WATCH=$!
wait "${PIDS[@]}"
kill $WATCH
( cd $R && tar czf $OUT/r22.tgz mlflow-*.db ray/*/selection ray/*/best_config.yaml ray/*/mixbench_search.json \
    ray/*/member_rungs )
for H in ${HORIZONS:-96 192 336 720}; do grep -v "^search .* | " $OUT/logs/search-$H.txt | grep -v "^ *[0-9]* .*_[0-9]* " | tail -12; done
cat $OUT/logs/done.txt
echo "all done at $(( $(date +%s) - START )) s"
