"""Errors a user can meet. Their message is one sentence that a person can act on."""


class CocoPathError(Exception):
    """Base class: the message is shown as is, in the GUI and as the CLI's one-line error."""


class SlideError(CocoPathError):
    """A slide cannot be opened or read (missing, not a slide, corrupt, unsupported)."""
