"""Errors that users read.

Library code raises a :class:`MedsegError` subclass whose message names the file or config key and the problem
in one line. The command line prints that line and exits with code 2; no traceback is shown.
"""
from __future__ import annotations


class MedsegError(Exception):
    """Base class for every error medseg reports to a user."""

    exit_code = 2


class InputError(MedsegError):
    """A data file is missing, truncated, corrupt, or inconsistent with its partner (shape, geometry, labels)."""


class ConfigError(MedsegError):
    """A configuration key, value, option or pipeline file is wrong."""


class CheckpointError(MedsegError):
    """A checkpoint cannot be loaded: wrong architecture, missing or unexpected keys, or unsafe content."""


class OutputError(MedsegError):
    """An output cannot be written: its folder is a file, cannot be created, or holds results made otherwise."""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM, so it unwinds (and cleans up) like Ctrl-C.

    The command line exits with 143 (128 + SIGTERM) instead of 130 (128 + SIGINT).
    """


class TrainingStopped(MedsegError):
    """A training run was stopped before its schedule ended (a signal, or ``stop_after``); ``last.pt`` is saved.

    ``exit_code`` is the run's: 130 after SIGINT, 143 after SIGTERM (128 + the signal number), 0 for ``stop_after``
    (stopped as asked, as ``medseg train`` reports it).
    """

    def __init__(self, message: str, exit_code: int = 0):
        super().__init__(message)
        self.exit_code = exit_code


#: Exit codes of every ``medseg`` command.
EXIT_OK = 0  # everything succeeded
EXIT_SOME_FAILED = 1  # a batch completed but some cases failed (they are listed)
EXIT_BAD_INPUT = 2  # bad invocation, or nothing could run
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
