"""Leaderboards, paper-ready tables and figures built from the runs in MLflow."""
