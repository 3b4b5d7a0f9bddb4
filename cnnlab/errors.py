"""User-facing errors: one class, caught by the CLI and printed as one line without a traceback."""


class CnnlabError(Exception):
    """A problem the user can fix; the message says what was wrong, with which file or value, and what to do."""


class ImageReadError(CnnlabError):
    """An image file that cannot be decoded: the path, the reason in words, and a short problem code
    ("empty-file", "not-an-image", "truncated-or-corrupt", "over-pixel-cap", ...) for reports."""

    def __init__(self, path, reason: str, problem: str = "unreadable"):
        self.path = str(path)
        self.reason = reason
        self.problem = problem
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self):
        # DataLoader workers and process pools pickle exceptions: keep all three fields
        return type(self), (self.path, self.reason, self.problem)
