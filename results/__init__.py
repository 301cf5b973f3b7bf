"""Leaderboards, paper-ready tables and figures built from the runs in MLflow.

`mixbench benchmark` (benchmark.py, configs.py) runs the grid as Ray tasks; runs.py reads complete runs back as
records, leaderboard.py summarises them, table.py lays them out as the MixMamba paper's table (paper.py holds its
published numbers), render.py writes LaTeX/Markdown/CSV and figures.py the PNGs; commands.py is the CLI.
"""
