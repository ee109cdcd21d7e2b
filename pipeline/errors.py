"""The one exception type for user errors.

The CLI shows a ``PipelineError`` as a single line and exits non-zero; any other
exception is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """A problem the user can fix: bad config, missing file, wrong data, failed gate."""
