"""Errors that the CLI turns into a clean message and exit code 2.

Library code raises these; only the CLI edge (finetune.cli) prints them. A ``Problem`` names
the file that set the offending value and its JSON path, so several problems can be reported
at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the input: where it comes from and what is wrong."""

    file: str  # the file (or "--set", or a flag such as "--grid-config") that set the value
    path: str  # JSON path such as "$.hyperparameters.learning_rate"; "" when it names no value
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class FinetuneError(Exception):
    """Bad input or an unusable environment: exit code 2, no traceback, nothing written."""

    exit_code = 2

    def __init__(self, message: str | None = None, problems: list[Problem] | None = None):
        self.problems = sorted(set(problems or []), key=lambda p: (p.file, p.path, p.message))
        if message is None:
            message = "\n".join(str(p) for p in self.problems)
        elif self.problems:
            message = message + "\n" + "\n".join("  " + str(p) for p in self.problems)
        super().__init__(message)


class ConfigError(FinetuneError):
    """A config layer, the language database or a grid config is invalid."""


class UsageError(FinetuneError):
    """A command-line flag or argument is invalid."""
