"""Machine-independent text for reports: paths, commands and messages without this machine's absolute paths.

A committed report must read the same whoever builds it, so every path it shows goes through :func:`display_path`:
below the project root (``sr.commands.config.find_project_root()``) it is shown relative to the root, elsewhere as
``<outside>/<name>`` (the folder holding it is this machine's business). Free text (error messages, n/a reasons)
has each absolute path inside it replaced the same way (:func:`portable_text`); commands also show ``python`` for
the interpreter's path (:func:`portable_command`).
"""

import re
import shlex
from pathlib import Path

from sr.commands.config import find_project_root

OUTSIDE = "<outside>"
# An absolute POSIX path inside free text: a "/" that does not continue a word, a relative path, a URL ("://") or
# an already portable "<outside>/", then path characters. Paths with spaces are not recognised.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/:>$-])/[\w.+@%~-][\w.+@%~/-]*")
PYTHON_EXECUTABLE = re.compile(r"python[0-9.]*")


def display_path(path: str | Path) -> str:
    """``path`` as a report shows it: relative to the project root when below it, ``<outside>/<name>`` when
    absolute elsewhere, a relative path as given."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    root = find_project_root()
    for candidate in (path, path.resolve()):
        for base in (root, root.resolve()):
            if candidate.is_relative_to(base):
                return candidate.relative_to(base).as_posix() or "."
    return f"{OUTSIDE}/{path.name}"


def portable_text(text: str) -> str:
    """``text`` with every absolute path in it shown by :func:`display_path` (a sentence's final dot kept out)."""
    def replace(match: re.Match) -> str:
        found = match.group(0)
        stripped = found.rstrip(".")
        return display_path(stripped) + found[len(stripped):]

    return ABSOLUTE_PATH.sub(replace, text)


def portable_command(command: str) -> str:
    """A shell command line with ``python`` for a Python interpreter given by its path and portable paths."""
    try:
        tokens = shlex.split(command)
    except ValueError:  # unbalanced quotes: not a command line this module wrote; treat it as text
        return portable_text(command)
    if tokens and PYTHON_EXECUTABLE.fullmatch(Path(tokens[0]).name):
        tokens[0] = "python"
    return shlex.join(portable_text(token) for token in tokens)
