"""What every CLI module shares: exit codes, the one-line error, option labels."""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# A second Ctrl-C waits at most this long for the `interrupted` row before the process exits.
SECOND_SIGNAL_WRITE_S = 3.0


# How `imagine`'s options are named in errors about a clashing inline flag.
CLI_OPTION_LABELS = {
    "seed": "--seed",
    "steps": "--steps",
    "count": "--count",
    "negative": "--negative",
    "expand": "--no-expand",
    "mitigation": "--mitigation",
}


class CliError(Exception):
    """A user-facing error: printed as one line, exit code attached."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


CLI_ACTIONS = ("upscale", "vary", "zoom", "pan", "remix", "enhance")
