"""The `mixbench` command line: one lazy click group that routes to each package's commands.

Subcommands are imported only when invoked, so `mixbench --help` stays fast and never imports Ray or MLflow.
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

import click

from benchmarks.errors import MixbenchError

# name -> (module:attribute, one-line purpose, example)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "benchmark": (
        "benchmarks.grid.command:benchmark",
        "Run the benchmark grid (datasets x models x horizons x seeds) as Ray tasks, logged to MLflow.",
        "mixbench benchmark --datasets weather,ETTh1 --seeds 3 --suite paper",
    ),
    "export": (
        "results.commands:export",
        "Write a suite's runs (and the searches behind them) as one CSV that rebuilds its tables without MLflow.",
        "mixbench export --suite paper --output runs.csv",
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
        "benchmarks.training.command:train",
        "Train and test one model on one dataset, tracked in MLflow.",
        "mixbench train --model mixmamba --dataset ETTh1 --pred-len 96",
    ),
    "ui": (
        "benchmarks.training.command:ui",
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
        "benchmarks.data.command:data",
        "List, download and inspect the benchmark datasets.",
        "mixbench data info weather --seq-len 96 --pred-len 96",
    ),
}

# A model or training setting that a command takes through `--set KEY=VALUE` rather than an option of its own.
SET_PREFIXES = ("model.", "train.")
SET_FLAG = "--set"
EXIT_BAD_INPUT = 2

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


def invoked_command(args: Sequence[str]) -> click.Command:
    """The command that `args` run (`jobs list` for `jobs list --address X`), found level by level as click finds it.

    Click drops its contexts once a command fails, so this looks again; mixbench's groups take only flags, so at each
    level the first argument that is no option names the subcommand.
    """
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group):
        names = [index for index, argument in enumerate(rest) if not argument.startswith("-")]
        if not names:
            break
        context = click.Context(command, resilient_parsing=True)
        _, found, rest = command.resolve_command(context, rest[names[0]:])
        if found is None:
            break
        command = found
    return command


def flag_for(command: click.Command, setting: str) -> str:
    """How a user of `command` writes `setting`: the longest flag of its option of that name (`pred_len` ->
    `--pred-len`, `time_budget_s` -> `--time-budget`, `format` -> `--format`), `--set model.x` for a model or training
    setting the command takes through `--set`, else the setting itself."""
    options = [param for param in command.params if isinstance(param, click.Option)]
    # A training setting with a flag of its own (`train.epochs` -> `--epochs` on `mixbench train`) takes that flag.
    field = setting[len("train."):] if setting.startswith("train.") else setting
    wanted = _normalised(field)
    for option in options:
        flags = [opt for opt in option.opts if opt.startswith("--")]
        spellings = {_normalised(option.name or ""), *(_normalised(flag[2:]) for flag in flags)}
        if flags and wanted in spellings:
            return max(flags, key=len)
    if setting.startswith(SET_PREFIXES) and any(SET_FLAG in option.opts for option in options):
        return f"{SET_FLAG} {setting}"
    return setting


def _normalised(name: str) -> str:
    return name.replace("-", "_")


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI and turns bad input into one line on stderr, naming the flag at fault, and exit code
    2 (a domain error with its own `exit_code`, such as a cluster that stopped answering, exits with that)."""
    global _debug
    args = sys.argv[1:] if argv is None else argv
    _debug = "--debug" in args or os.environ.get("MIXBENCH_DEBUG") == "1"
    try:
        code = cli.main(args=args, prog_name="mixbench", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.UsageError as error:
        # One line like a MixbenchError: click's own form adds a usage block around the message.
        if _debug:
            raise
        command = error.ctx.command_path if error.ctx is not None else "mixbench"
        click.echo(f"error: {error.format_message()} (see `{command} --help`)", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except MixbenchError as error:
        if _debug:
            raise
        command = invoked_command(args)
        click.echo(f"error: {error.render(lambda setting: flag_for(command, setting))}", err=True)
        # A domain error may carry its own code (a cluster that stopped answering exits 4); bad input exits 2.
        sys.exit(getattr(error, "exit_code", EXIT_BAD_INPUT))
    if isinstance(code, int):
        sys.exit(code)


if __name__ == "__main__":
    main()
