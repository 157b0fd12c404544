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
