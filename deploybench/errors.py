"""Errors the CLI turns into one readable line and an exit code."""


class DeploybenchError(Exception):
    """An expected failure: bad input, a missing server, a failed gate."""

    exit_code = 1


class UsageError(DeploybenchError):
    exit_code = 2


class ParityError(DeploybenchError):
    exit_code = 3


class IncompleteExportError(DeploybenchError):
    exit_code = 4


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a CI time limit, a container stop): cleaned up as Ctrl-C is, so the
    servers and load generators a command started are stopped and what it measured is kept."""

    exit_code = 143
    why = "terminated (SIGTERM)"

