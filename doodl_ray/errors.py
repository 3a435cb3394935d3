"""Errors a user can act on: the CLI prints them as one line, the job system records them per row."""


class DoodlError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""


class InvalidInput(DoodlError, ValueError):
    """Bad arguments, spec fields or input rows: detected before any GPU work, never retried."""


class ModelLoadError(DoodlError):
    """A model reference that does not resolve to a loadable model of the expected kind."""


class NonFiniteLoss(DoodlError, FloatingPointError):
    """The guidance loss became NaN or infinite; the item cannot make progress."""
