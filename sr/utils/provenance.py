"""Where a result came from: the git revision of the code and the command line that produced it."""

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMMAND_ENV = "SR_COMMAND"  # the user's command line, inherited by SLURM jobs (sbatch exports the environment)


@dataclass(frozen=True)
class GitState:
    """``revision``: ``<commit sha>``, with ``+dirty`` when ``modified`` is not empty, ``"uncommitted"`` in a
    repository without commits, ``"unknown"`` outside git; ``modified``: the tracked files that differ from the
    commit (staged or not), relative to the repository's top level."""

    revision: str
    modified: tuple[str, ...] = ()


def git_state(repo_dir: str | Path | None = None, ignore: tuple[str | Path, ...] = ()) -> GitState:
    """The commit and modified tracked files of ``repo_dir`` (default: this checkout), files below the folders
    ``ignore`` left out (a report leaves out its own output folder, which it is about to rewrite)."""
    cwd = Path(repo_dir) if repo_dir is not None else PROJECT_ROOT
    try:
        if _git(["rev-parse", "--is-inside-work-tree"], cwd) != "true":
            return GitState("unknown")
        commit = _git(["rev-parse", "--verify", "--quiet", "HEAD"], cwd)
        if not commit:
            return GitState("uncommitted")
        top = Path(_git(["rev-parse", "--show-toplevel"], cwd))
        names = _git(["-c", "core.quotepath=off", "diff", "--no-relative", "--name-only", "HEAD", "--"], cwd)
    except (OSError, subprocess.CalledProcessError):
        return GitState("unknown")
    ignored = [_relative_to(top, Path(folder)) for folder in ignore]
    modified = tuple(name for name in names.splitlines()
                     if not any(folder is not None and _is_below(name, folder) for folder in ignored))
    return GitState(commit + ("+dirty" if modified else ""), modified)


def git_revision(repo_dir: str | Path | None = None) -> str:
    """``git_state(repo_dir).revision``: the commit sha, ``+dirty`` when tracked files differ from it."""
    return git_state(repo_dir).revision


def _relative_to(top: Path, folder: Path) -> str | None:
    """``folder`` relative to the repository's top level (posix), None when it lies outside."""
    resolved, top = folder.resolve(), top.resolve()
    return resolved.relative_to(top).as_posix() if resolved.is_relative_to(top) else None


def _is_below(name: str, folder: str) -> bool:
    return folder == "." or name == folder or name.startswith(folder.rstrip("/") + "/")


def command_line() -> str:
    """The user's command, shell-quoted: the one :func:`pin_command_line` recorded in the environment (a SLURM job
    or DDP rank inherits it from the process that submitted or started it), else this process's ``sys.orig_argv``."""
    return os.environ.get(COMMAND_ENV) or shlex.join(sys.orig_argv)


def pin_command_line() -> None:
    """Called by the entry points: the jobs and ranks this process starts record its command, not their own
    (``python -m submitit.core._submit ...`` under SLURM)."""
    os.environ.setdefault(COMMAND_ENV, shlex.join(sys.orig_argv))


def _git(arguments: list[str], cwd: Path) -> str:
    completed = subprocess.run(["git", *arguments], check=False, cwd=cwd, capture_output=True, text=True, timeout=30)
    if completed.returncode not in (0, 1):  # 1: `rev-parse --verify --quiet` found no HEAD
        raise subprocess.CalledProcessError(completed.returncode, completed.args, completed.stdout, completed.stderr)
    return completed.stdout.strip()
