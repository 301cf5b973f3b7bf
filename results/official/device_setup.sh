# Sourced by run_weather_on_device.sh and run_kernels_on_device.sh on an offline H200 machine, from the repo root:
# unpacks .carry18's bundle onto /tmp/site, installs this checkout without dependencies, then builds (for sm_90,
# cluster/build-mamba-kernels.sh) and installs the kernels named in $KERNELS. A wheel already in /tmp/mamba-wheels
# is reused: a machine kept warm between calls builds each package once. Logs go to $OUT/logs.
START=$(date +%s)
: "${OUT:?the device call sets OUT}"
mkdir -p "$OUT/logs"
bash .carry18/site/install.sh
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/logs/pip.txt 2>&1 || tail -5 $OUT/logs/pip.txt
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/logs/machine.txt
# the official data loaders import scikit-learn, which this carry lacks (with scipy, 44 MB of wheels)
python3 -c "import sklearn; print('scikit-learn', sklearn.__version__)" >> $OUT/logs/machine.txt 2>&1
missing=""
for name in $KERNELS; do ls /tmp/mamba-wheels/$name-*.whl > /dev/null 2>&1 || missing="$missing $name"; done
if [ -n "$missing" ]; then
  # nproc honours OMP_NUM_THREADS, which the image sets low: name the cores.
  # Bounded, so that a slow build still leaves the call time to bring its log back (causal-conv1d once ran past 575 s).
  MAX_JOBS=$(grep -c ^processor /proc/cpuinfo) SDIST_DIR=.carry18/sdist PACKAGES="${missing# }" \
    timeout ${BUILD_LIMIT:-420} bash cluster/build-mamba-kernels.sh 90 /tmp/mamba-wheels > $OUT/logs/build.txt 2>&1 || tail -30 $OUT/logs/build.txt
  cp /tmp/mamba-wheels/build-times.json $OUT/ 2>/dev/null
  cat /tmp/mamba-wheels/*.log > $OUT/logs/build-verbose.txt 2>/dev/null
  echo "built${missing} at $(( $(date +%s) - START )) s"
else
  echo "reusing the wheels in /tmp/mamba-wheels (built by an earlier call on this machine)"
fi
ls -l /tmp/mamba-wheels >> $OUT/logs/build.txt
# Without mamba_ssm nothing here can run; without causal_conv1d the steps that need it say so and the rest run.
for name in $KERNELS; do
  python3 -m pip install -q --no-deps /tmp/mamba-wheels/$name-*.whl >> $OUT/logs/pip-kernels.txt 2>&1
  python3 -c "import $name; print('$name', $name.__version__)" || [ $name != mamba_ssm ] || exit 1
done
