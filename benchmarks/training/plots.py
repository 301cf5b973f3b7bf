"""The run plots logged as MLflow artifacts: forecast vs truth on test windows, and a mixture of experts' routing."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen before pyplot loads
import numpy as np  # noqa: E402


def plot_forecast(history: np.ndarray, truth: np.ndarray, forecast: np.ndarray, *, channel_names: Sequence[str],
                  window_indices: Sequence[int], title: str, path: Path) -> Path:
    """One panel per (window, channel): the lookback, then the true future against the forecast.

    history (W, seq_len, C), truth and forecast (W, pred_len, C); `window_indices` label the rows.
    """
    windows, seq_len, channels = history.shape
    pred_len = truth.shape[1]
    past = np.arange(-seq_len, 0)
    future = np.arange(pred_len)
    figure, axes = plt.subplots(windows, channels, figsize=(4.2 * channels, 2.6 * windows), squeeze=False)
    for row in range(windows):
        for column in range(channels):
            axis = axes[row, column]
            axis.plot(past, history[row, :, column], color="0.55", linewidth=1.0, label="lookback")
            axis.plot(future, truth[row, :, column], color="tab:blue", linewidth=1.2, label="truth")
            axis.plot(future, forecast[row, :, column], color="tab:orange", linewidth=1.2, label="forecast")
            axis.axvline(0, color="0.8", linewidth=0.8)
            axis.set_title(f"test window {window_indices[row]} - {channel_names[column]}", fontsize=9)
            axis.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    figure.suptitle(title, fontsize=10)
    figure.supxlabel("time step (0 = first forecast step)", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def plot_expert_usage(expert_share: np.ndarray, first_choice_share: np.ndarray, dropped_token_rate: float, *,
                      title: str, path: Path) -> Path:
    """Per expert: the share of processed token->expert assignments and the share of tokens choosing it first;
    beside them the share of tokens no expert processed (dropped over capacity).

    expert_share and first_choice_share (E,) each sum to 1; dropped_token_rate in [0, 1].
    """
    processed = np.asarray(expert_share, dtype=float)
    first = np.asarray(first_choice_share, dtype=float)
    experts = processed.shape[0]
    positions = np.arange(experts)
    width = 0.38
    figure, axis = plt.subplots(figsize=(max(4.5, 0.9 * experts + 2.5), 3.4))
    groups = [
        axis.bar(positions - width / 2, processed, width, color="tab:blue", label="assignments processed"),
        axis.bar(positions + width / 2, first, width, color="tab:cyan", label="first choice"),
        axis.bar([experts + 0.5], [dropped_token_rate], width, color="tab:red", label="tokens dropped"),
    ]
    axis.axhline(1.0 / experts, color="0.5", linestyle="--", linewidth=0.8, label="uniform share")
    for bars in groups:
        for bar in bars:
            height = bar.get_height()
            axis.annotate(f"{height:.1%}", (bar.get_x() + bar.get_width() / 2, height), ha="center", va="bottom",
                          fontsize=7)
    axis.set_xticks(list(positions) + [experts + 0.5], [f"expert {index}" for index in positions] + ["dropped"])
    axis.set_ylim(0, 1.1)
    axis.set_ylabel("share")
    axis.legend(fontsize=7, loc="upper right")
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
