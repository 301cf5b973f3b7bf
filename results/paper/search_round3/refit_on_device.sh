#!/bin/bash
# Issue 22's refit into the paper tables: the configurations round 3 chose on validation (results/paper/searched_configs.yaml),
# 3 seeds each (fused), full epochs, every test window, suite `paper`, on one H200 (session 8, one `device` call):
#   bash results/paper/search_round3/refit_on_device.sh          carry .carry17 (data/) and .whl17 (cluster/offline-wheels.sh)
# Then, here: the rows of $OUT/refit.csv join the default-config grid rows in results/paper/runs.csv (results/README.md).
source results/paper/search_round3/device_setup.sh
R=/tmp/refit; rm -rf $R; mkdir -p $R; cd $R
timeout -k 20 ${LIMIT:-480} python3 $ROOT/cli.py benchmark --datasets weather,ETTh1 --models mixmamba \
  --configs $ROOT/results/paper/searched_configs.yaml --suite paper --seeds 3 --gpus-per-run 0.125 \
  --cpus-per-run 2 --tracking-uri sqlite:///$R/mlflow.db > $OUT/logs/benchmark.txt 2>&1
echo "benchmark rc=$? at $(( $(date +%s) - START )) s"
python3 $ROOT/cli.py export --suite paper --output $OUT/refit.csv --tracking-uri sqlite:///$R/mlflow.db
tail -25 $OUT/logs/benchmark.txt
echo "all done at $(( $(date +%s) - START )) s"
