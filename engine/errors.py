"""Errors a user can meet. Their message is one sentence that a person can act on."""


class CocoPathError(Exception):
    """Base class: the message is shown as is, in the GUI and as the CLI's one-line error."""


class SlideError(CocoPathError):
    """A slide cannot be opened or read (missing, not a slide, corrupt, unsupported)."""


class FileProblem(CocoPathError):
    """A path given as an input file cannot be read as one: missing, a folder, a FIFO or device,
    unreadable, or larger than the limit for what it should hold."""
