"""The `mixbench` command line: one lazy click group that routes to each package's commands.

Subcommands are imported only when invoked, so `mixbench --help` stays fast and never imports Ray or MLflow.
"""
from __future__ import annotations

import importlib
import os
import sys

import click

# name -> (module:attribute, one-line purpose, example)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "benchmark": (
        "results.commands:benchmark",
        "Run the benchmark grid (datasets x models x horizons x seeds) as Ray tasks, logged to MLflow.",
        "mixbench benchmark --datasets weather,ETTh1 --seeds 3 --suite paper",
    ),
    "export": (
        "results.commands:export",
        "Write a suite's runs (and the searches behind them) as one CSV that rebuilds its tables without MLflow.",
        "mixbench export --suite paper --output results/paper/runs.csv",
    ),
    "jobs": (
        "cluster.commands:jobs",
        "List, follow and stop the jobs on a Ray cluster.",
        "mixbench jobs logs raysubmit_XXXX --follow --address http://HEAD:8265",
    ),
    "leaderboard": (
        "results.commands:leaderboard",
        "Test MSE/MAE per dataset, horizon and model: mean +- std over seeds, config chosen by validation loss.",
        "mixbench leaderboard --suite paper --format csv",
    ),
    "train": (
        "benchmarks.train_command:train",
        "Train and test one model on one dataset, tracked in MLflow.",
        "mixbench train --model mixmamba --dataset ETTh1 --pred-len 96",
    ),
    "ui": (
        "benchmarks.train_command:ui",
        "Open the MLflow UI on the tracking store (127.0.0.1 by default).",
        "mixbench ui --port 5000",
    ),
    "search": (
        "search.command:search",
        "Search a model's hyperparameters: Optuna proposes, Ray Tune runs, ASHA stops early, MLflow records.",
        "mixbench search --dataset weather",
    ),
    "submit": (
        "cluster.commands:submit",
        "Run a mixbench command (e.g. a search) on a Ray cluster as a Ray job.",
        "mixbench submit --address http://HEAD:8265 --tracking-uri http://HEAD:5000 --wait -- search --dataset weather",
    ),
    "table": (
        "results.commands:table",
        "The MixMamba-paper results table (LaTeX/Markdown/CSV), optionally with per-dataset PNG figures.",
        "mixbench table --format latex --reference paper --std --figures figures/",
    ),
    "data": (
        "benchmarks.data_commands:data",
        "List, download and inspect the benchmark datasets.",
        "mixbench data info weather --seq-len 96 --pred-len 96",
    ),
}

_debug = False


class LazyGroup(click.Group):
    """A click group whose subcommands live in other modules and load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, f"{purpose}  e.g. `{example}`") for name, (_, purpose, example) in sorted(COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback when a command fails.")
@click.version_option(package_name="mixbench")
def cli(debug: bool) -> None:
    """Search and benchmark deep time-series forecasters.

    \b
    Example:
      mixbench search --dataset weather
    """
    global _debug
    _debug = debug or _debug


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI and turns bad input into one line on stderr and exit code 2."""
    from benchmarks.errors import InputError

    global _debug
    args = sys.argv[1:] if argv is None else argv
    _debug = "--debug" in args or os.environ.get("MIXBENCH_DEBUG") == "1"
    try:
        code = cli.main(args=args, prog_name="mixbench", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.UsageError as error:
        # One line like InputError: click's own form adds a usage block around the message.
        if _debug:
            raise
        command = error.ctx.command_path if error.ctx is not None else "mixbench"
        click.echo(f"error: {error.format_message()} (see `{command} --help`)", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except InputError as error:
        if _debug:
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    if isinstance(code, int):
        sys.exit(code)


if __name__ == "__main__":
    main()
