"""The errors every room raises for one input or one file; their message names the file and the fix, and the
commands print it as one line (:func:`one_line`; :mod:`stunet.cli.errors`)."""


class CaseError(ValueError):
    """A case that cannot be processed; the message names the file and the cause."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or is refused; the message names the file and what to do."""


def printable(text: str) -> str:
    """``text`` safe to print on one line of any terminal or log: bytes of file names that do not decode
    (``\\udcff``) and control characters, line breaks included, written as escapes."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` on one line (:func:`printable`, its lines joined with '; '), at most ``limit`` characters: a line
    break in a file name cannot forge a line of the log."""
    joined = "; ".join(printable(line.strip()) for line in str(text).splitlines() if line.strip())
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def rounded(value: float, digits: int = 7) -> float:
    """``value`` at ``digits`` significant digits (7: a float32's precision), as people write it: float32 noise gone
    (``0.8999999761581421`` -> ``0.9``); printed, written to CSV and JSON alike."""
    return float(f"{float(value):.{digits}g}")


def numbers(values) -> str:
    """A tuple of numbers printed :func:`rounded`: ``(0.9, 0.9, 2.0)``."""
    return "(" + ", ".join(repr(rounded(v)) for v in values) + ")"
