"""One line for every error a user can cause; the traceback only on request.

Every entry point (``upscale.py``, ``eval.py``, ``train.py``, ``python -m sr.*``) runs its work inside
:func:`one_line_errors`: an exception ends the command with exit status 1 and the single line ::

    <prog>: error: <message of the innermost exception>

The innermost exception is the root cause: Hydra's ``InstantiationException: Error in call to target ...`` and other
wrappers chain the real problem (``raise ... from error``), and that is what a user can act on. ``debug=true`` (Hydra
commands), ``--debug`` (argparse commands) or the environment variable ``HYDRA_FULL_ERROR=1`` let the exception
propagate with its full traceback instead.
"""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager



class ConfigError(ValueError):
    """A setting that cannot work; the message names the key, the value and what is expected."""


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s ``__cause__`` / ``__context__`` chain (``error`` itself if none)."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or error.__context__
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def describe(error: BaseException) -> str:
    """One line for ``error``: the root cause's first message line, prefixed by its type unless it is one of the
    project's own messages (``ConfigError``, ``CheckpointError``, ``ImageReadError`` ... name file and problem)."""
    cause = root_cause(error)
    lines = str(cause).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if isinstance(cause, ConfigError) or type(cause).__module__.startswith("sr."):
        return text or type(cause).__name__
    if isinstance(cause, KeyError) and text:  # str(KeyError) is the quoted key alone
        text = f"missing key {text}"
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def traceback_wanted(debug: bool = False) -> bool:
    """``debug`` or ``HYDRA_FULL_ERROR=1`` in the environment."""
    return bool(debug) or os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextmanager
def one_line_errors(prog: str, debug: bool = False, debug_flag: str = "debug=true") -> Iterator[None]:
    """Turn any exception of the block into the line ``<prog>: error: <root cause>`` on stderr and exit status 1,
    unless :func:`traceback_wanted`; ``debug_flag`` is how the command's user asks for the traceback.
    ``KeyboardInterrupt`` and ``SystemExit`` pass through untouched."""
    try:
        yield
    except Exception as error:
        if traceback_wanted(debug):
            raise
        print(f"{prog}: error: {describe(error)} ({debug_flag} or HYDRA_FULL_ERROR=1 shows the traceback)",
              file=sys.stderr)
        raise SystemExit(1) from None
