"""One exception type for every problem a user can fix. The CLI prints it as one line and exits non-zero."""


class MaskrayError(Exception):
    """A user-facing error: the message names the file or option and what is wrong and what is allowed."""
