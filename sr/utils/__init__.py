"""Small project-wide helpers."""

from sr.utils.provenance import command_line, git_revision

__all__ = ["command_line", "git_revision"]
