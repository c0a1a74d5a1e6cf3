"""Where a result came from: the git revision of the code and the command line that produced it."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMMAND_ENV = "SR_COMMAND"  # the user's command line, inherited by SLURM jobs (sbatch exports the environment)


def git_revision(repo_dir: str | Path | None = None) -> str:
    """``<commit sha>`` of ``repo_dir`` (default: this checkout), ``+dirty`` when tracked files differ from it.

    ``"uncommitted"`` in a repository without commits, ``"unknown"`` outside git or without a git executable.
    """
    cwd = Path(repo_dir) if repo_dir is not None else PROJECT_ROOT
    try:
        inside = _git(["rev-parse", "--is-inside-work-tree"], cwd)
        if inside != "true":
            return "unknown"
        commit = _git(["rev-parse", "--verify", "--quiet", "HEAD"], cwd)
        dirty = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    if not commit:
        return "uncommitted"
    return commit + ("+dirty" if dirty else "")


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
