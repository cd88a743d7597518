"""Errors that map to the CLI's exit codes."""


class UserInputError(Exception):
    """Bad usage, configuration or input: the user can fix it (exit code 2)."""

    exit_code = 2


class BlockingAnomaliesError(Exception):
    """Data validation found anomalies that stop the run (exit code 3)."""

    exit_code = 3
