"""The one exception type for user errors.

The CLI shows a ``PipelineError`` as a single line and exits non-zero; any other
exception is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """A problem the user can fix: bad config, missing file, wrong data, failed gate."""


class UserCodeError(PipelineError):
    """An exception raised inside the user's own code (their model's file, builder, forward or data
    callable): one line naming their file, line and exception; the full traceback kept beside it."""

    def __init__(self, message: str, traceback_text: str) -> None:
        super().__init__(message)
        self.traceback_text = traceback_text
