"""Hyperparameter search: Optuna-proposed trials run by Ray Tune, stopped early by ASHA, tracked in MLflow."""
