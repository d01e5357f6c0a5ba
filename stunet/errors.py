"""The errors every room raises for one input or one file; their message names the file and the fix, and the
commands print it as one line (:mod:`stunet.cli.errors`)."""


class CaseError(ValueError):
    """A case that cannot be processed; the message names the file and the cause."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or is refused; the message names the file and what to do."""
