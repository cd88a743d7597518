"""Errors that map to the CLI's exit codes."""


class UserInputError(Exception):
    """Bad usage, configuration or input: the user can fix it (exit code 2).

    `details`, when given, is what the failing stage had found (counts, say), for the run record.
    """

    exit_code = 2

    def __init__(self, message: str, details=None):
        super().__init__(message)
        self.details = details


class BlockingAnomaliesError(Exception):
    """Data validation found anomalies that stop the run (exit code 3)."""

    exit_code = 3

    def __init__(self, message: str, details=None):
        super().__init__(message)
        self.details = details
