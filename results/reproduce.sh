#!/usr/bin/env bash
# The runs behind results/: the default-config grid, one MixMamba search per (dataset, horizon) and the 3-seed refit
# of each search's best config, all logged to one MLflow store. Steps: grid | search | refit | all (in that order).
# Every step can be re-run: the grid and the refit skip complete cells, a search of the same name resumes.
#
#   MIXBENCH_DATA_DIR=../shared/data bash results/reproduce.sh all
#
# Knobs (environment): WORK (store and Ray folders, default ./reproduce), DATASETS, HORIZONS, SUITE, SEEDS,
# GPU_SHARE (per run/trial, default 0.125), SEARCH_SPACE, SEARCH_TRIALS, SEARCH_EPOCHS, SEARCH_BUDGET_S,
# SEARCHES_PER_GPU, CPUS_PER_TRIAL, MIXBENCH (the command).
set -uo pipefail

step=${1:-all}
WORK=${WORK:-$PWD/reproduce}
DATASETS=${DATASETS:-weather,ETTh1}
HORIZONS=${HORIZONS:-96,192,336,720}
SUITE=${SUITE:-paper}
SEEDS=${SEEDS:-3}
SEARCH_SPACE=${SEARCH_SPACE:-$(cd "$(dirname "$0")/.." && pwd)/search/spaces/mixmamba-wide.yaml}
SEARCH_TRIALS=${SEARCH_TRIALS:-64}
# The refit trains with the recipe's 10 epochs; trials get as many, so a cosine schedule means the same in both.
SEARCH_EPOCHS=${SEARCH_EPOCHS:-10}
SEARCH_BUDGET_S=${SEARCH_BUDGET_S:-300}
SEARCHES_PER_GPU=${SEARCHES_PER_GPU:-2}
CPUS_PER_TRIAL=${CPUS_PER_TRIAL:-2}
read -r -a MIXBENCH <<<"${MIXBENCH:-mixbench}"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$WORK/mlflow.db}
mkdir -p "$WORK/logs"

# GPUs this step may use: CUDA_VISIBLE_DEVICES if set, else every GPU nvidia-smi lists (none: CPU).
gpu_ids() {
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then tr ',' ' ' <<<"$CUDA_VISIBLE_DEVICES"
    elif command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=index --format=csv,noheader | tr '\n' ' '
    fi
}

# Eight runs or trials share a GPU; without GPUs everything runs on the CPU.
if [[ -n $(gpu_ids) ]]; then GPU_SHARE=${GPU_SHARE:-0.125}; else GPU_SHARE=0; fi

grid() {
    "${MIXBENCH[@]}" benchmark --datasets "$DATASETS" --horizons "$HORIZONS" --seeds "$SEEDS" --suite "$SUITE" \
        --gpus-per-run "$GPU_SHARE" 2>&1 | tee -a "$WORK/logs/grid.log"
}

# One search per (dataset, horizon), SEARCHES_PER_GPU of them pinned to each GPU at once, SEARCH_SPACE (MixMamba's wide
# space: trials train with MAE or MSE and are ranked on validation MSE), selection on validation only.
search() {
    local gpus=($(gpu_ids)) slots=() pids=() index=0 dataset horizon
    for dataset in ${DATASETS//,/ }; do
        for horizon in ${HORIZONS//,/ }; do
            local name="mixmamba-$dataset-pred$horizon"
            local resume=()
            [[ -d $WORK/ray/$name ]] && resume=(--resume)
            local device=()
            if ((${#gpus[@]})); then
                device=(env CUDA_VISIBLE_DEVICES=${gpus[$(((index / SEARCHES_PER_GPU) % ${#gpus[@]}))]})
            fi
            "${device[@]}" "${MIXBENCH[@]}" search --dataset "$dataset" --model mixmamba --pred-len "$horizon" \
                --space "$SEARCH_SPACE" --trials "$SEARCH_TRIALS" --epochs "$SEARCH_EPOCHS" \
                --time-budget "$SEARCH_BUDGET_S" --gpus-per-trial "$GPU_SHARE" --cpus-per-trial "$CPUS_PER_TRIAL" \
                --name "$name" --storage-path "$WORK/ray" "${resume[@]}" >"$WORK/logs/$name.log" 2>&1 &
            pids+=($!)
            index=$((index + 1))
            # Every GPU holds SEARCHES_PER_GPU searches: wait for this wave before starting the next.
            if ((${#gpus[@]} && index % (SEARCHES_PER_GPU * ${#gpus[@]}) == 0)) || ((!${#gpus[@]})); then
                wait "${pids[@]}"; pids=()
            fi
        done
    done
    ((${#pids[@]})) && wait "${pids[@]}"
    grep -h "^best:" "$WORK"/logs/mixmamba-*.log
}

refit() {
    "${MIXBENCH[@]}" benchmark --datasets "$DATASETS" --horizons "$HORIZONS" --models mixmamba --configs best \
        --seeds "$SEEDS" --suite "$SUITE" --gpus-per-run "$GPU_SHARE" 2>&1 | tee -a "$WORK/logs/refit.log"
}

case $step in
    grid) grid ;;
    search) search ;;
    refit) refit ;;
    all) grid; search; refit ;;
    *) echo "error: unknown step '$step'; use grid, search, refit or all" >&2; exit 2 ;;
esac
