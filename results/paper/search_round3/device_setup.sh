# Sourced by run_on_device.sh and refit_on_device.sh on the H200 machine, from the repo root: unpacks the offline
# bundle (.whl17, from cluster/offline-wheels.sh), installs this checkout without dependencies, points the data
# directory at the carried CSVs (.carry17/data) and records the GPU; logs go to $OUT/logs.
START=$(date +%s); ROOT=$PWD
mkdir -p $OUT/logs
bash .whl17/install.sh > $OUT/logs/install.txt 2>&1 || { tail -20 $OUT/logs/install.txt; exit 1; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/logs/pip.txt 2>&1 || tail -5 $OUT/logs/pip.txt
export MIXBENCH_DATA_DIR=$PWD/.carry17/data RAY_USAGE_STATS_ENABLED=0 RAY_enable_metrics_collection=0 \
  PYTHONUNBUFFERED=1 MIXBENCH_CACHE_DIR=/tmp/mbcache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/logs/machine.txt
