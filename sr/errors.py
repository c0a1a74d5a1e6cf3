"""One line for every error a user can cause; the traceback only on request.

Every entry point (``upscale.py``, ``eval.py``, ``train.py``, ``python -m sr.*``) runs its work inside
:func:`one_line_errors`: an exception ends the command with exit status 1 and the single line ::

    <prog>: error: <message of the reported cause>

The message is the project's own where there is one: the innermost exception of the chain raised by this project's
code (``sr.*``), which names the file or setting and the problem; otherwise the innermost exception. Hydra's
``InstantiationException: Error in call to target ...`` and other wrappers chain the real problem
(``raise ... from error``), and a library's own exception (``SafetensorError``, ``UnpicklingError``, ``OSError``)
that the project turned into a message naming the file is not shown instead of that message. ``debug=true`` (Hydra
commands), ``--debug`` (argparse commands) or the environment variable ``HYDRA_FULL_ERROR=1`` let the exception
propagate with its full traceback instead.
"""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key, the value and what is expected."""


class ReportedFailure(SystemExit):
    """Exit status 1 after :func:`one_line_errors` printed its line; ``message`` keeps that line's message for a
    launcher that reports the jobs of a sweep (``sr.commands.launch``)."""

    def __init__(self, message: str):
        super().__init__(1)
        self.message = message


def exception_chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it chains (``__cause__``, or ``__context__`` unless ``raise ... from None``
    suppressed it), outermost first."""
    chain = [error]
    while True:
        inner = error.__cause__ if error.__cause__ is not None else (
            None if error.__suppress_context__ else error.__context__)
        if inner is None or any(inner is seen for seen in chain):
            return chain
        chain.append(inner)
        error = inner


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s chain (:func:`exception_chain`; ``error`` itself if none)."""
    return exception_chain(error)[-1]


def raised_by_project(error: BaseException) -> bool:
    """Whether ``error`` was raised by this project's code: the innermost frame of its traceback is in ``sr.*``."""
    frame_traceback = error.__traceback__
    if frame_traceback is None:
        return False
    while frame_traceback.tb_next is not None:
        frame_traceback = frame_traceback.tb_next
    return str(frame_traceback.tb_frame.f_globals.get("__name__", "")).startswith("sr.")


def reported_cause(error: BaseException) -> BaseException:
    """The exception whose message a user sees: the innermost one raised by the project (module docstring), else
    the innermost one."""
    chain = exception_chain(error)
    return next((inner for inner in reversed(chain) if raised_by_project(inner)), chain[-1])


def describe(error: BaseException) -> str:
    """One line for ``error``: the :func:`reported_cause`'s first message line, prefixed by its type unless it is one
    of the project's own messages (``ConfigError``, ``CheckpointError``, ``ImageReadError`` ... name file and
    problem)."""
    cause = reported_cause(error)
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
    (:class:`ReportedFailure`) unless :func:`traceback_wanted`; ``debug_flag`` is how the command's user asks for the
    traceback.
    ``KeyboardInterrupt`` and ``SystemExit`` pass through untouched."""
    try:
        yield
    except Exception as error:
        if traceback_wanted(debug):
            raise
        message = describe(error)
        print(f"{prog}: error: {message} ({debug_flag} or HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
        raise ReportedFailure(message) from None
