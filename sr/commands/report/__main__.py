"""``python -m sr.commands.report``: see :mod:`sr.commands.report.cli`."""

from sr.commands.report.cli import main

main()
