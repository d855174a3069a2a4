"""The one error type the devcluster raises: a cause the user can act on, plus where to look."""

from pathlib import Path


class DevclusterError(Exception):
    """A failure with a one-line cause and, when there is one, the log that explains it."""

    def __init__(self, cause: str, *, log: Path | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.log = log

    def __str__(self) -> str:
        return f"{self.cause} (log: {self.log})" if self.log else self.cause
