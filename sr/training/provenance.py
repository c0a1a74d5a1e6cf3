"""Which code produced a run: the git revision of the checkout (``sr/utils/provenance.py`` did not exist yet)."""

import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def git_revision(repo: str | Path = PROJECT_ROOT) -> str:
    """``<commit sha>`` plus ``-dirty`` when tracked files changed; ``"unknown (<reason>)"`` outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        # a fresh repository without commits fails `rev-parse HEAD` too: still record why
        return f"unknown ({type(error).__name__})"
    return f"{commit}-dirty" if status else commit
