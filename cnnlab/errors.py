"""User-facing errors: one class, caught by the CLI and printed as one line without a traceback."""


class CnnlabError(Exception):
    """A problem the user can fix; the message says what was wrong, with which file or value, and what to do."""


class ImageReadError(CnnlabError):
    """An image file that cannot be decoded; carries the path and the reason so callers can skip and report it."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")
