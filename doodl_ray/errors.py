"""Errors a user can act on: the CLI prints them as one line, the job system records them per row."""


class DoodlError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""


def error_line(command: str, exc: BaseException) -> str:
    """How a `doodl-ray` command reports an error: one line (a DoodlError's own words; others with their type)."""
    kind = "error" if isinstance(exc, DoodlError) else f"error ({type(exc).__name__})"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"doodl-ray {command}: {kind}: {text if len(text) <= 500 else text[:497] + '...'}"


class InvalidInput(DoodlError, ValueError):
    """Bad arguments, spec fields or input rows: detected before any GPU work, never retried."""


class ModelLoadError(DoodlError):
    """A model reference that does not resolve to a loadable model of the expected kind."""


class NonFiniteLoss(DoodlError, FloatingPointError):
    """The guidance loss became NaN or infinite; the item cannot make progress."""


class RunInterrupted(DoodlError):
    """A run stopped by its cluster, not by its spec (the head lost, no actor able to run for too long).
    `state` is what the run's manifest records; a rerun resumes from the ledger. The CLI exits with
    EX_TEMPFAIL (75), so a scheduler can tell "run it again" from a spec error (1)."""

    exit_status = 75

    def __init__(self, message: str, state: str):
        super().__init__(message)
        self.state = state
