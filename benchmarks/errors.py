"""The platform's domain errors: problems the user can fix, each one line naming the setting at fault and the fix.

Library code raises these and never names a command-line flag: a message spells the setting at fault as the
placeholder `{setting}` and passes `setting=` in its one spelling (`dataset`, `pred_len`, `trials`, `model.d_model`,
`train.batch_size`, ...). `str(error)` fills the placeholder with that spelling; the CLI fills it with the flag of the
command the user ran (`error.render(flag)`), prints one line and exits 2.
"""
from __future__ import annotations

from typing import Callable

PLACEHOLDER = "{setting}"


class MixbenchError(Exception):
    """Something the user gave or set up is wrong. `setting` is the setting at fault, if one is."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.template = message
        self.setting = setting

    def render(self, spell: Callable[[str], str] | None = None) -> str:
        """The message with `{setting}` spelt by `spell(setting)` (e.g. as a CLI flag), else as the setting itself."""
        if self.setting is None:
            return self.template
        return self.template.replace(PLACEHOLDER, spell(self.setting) if spell else self.setting)

    def __str__(self) -> str:
        return self.render()


class SettingError(MixbenchError):
    """A setting's value is invalid for the model, the training loop, the protocol or a command."""


class DataError(MixbenchError):
    """A dataset is unknown, missing or fails a check (hash, dates, values, shape), or is too short for a window."""


class SpaceError(MixbenchError):
    """A search-space file is not valid, or proposes configs the model rejects."""


class TrackingError(MixbenchError):
    """The MLflow store or tracking server cannot be used as asked."""


class ClusterError(MixbenchError):
    """A Ray cluster, its address, token or a job on it cannot be used as asked."""


class ResultsError(MixbenchError):
    """Runs, exports or output paths the results commands need are missing or malformed."""

