"""``python -m sr.report``: see :mod:`sr.report.cli`."""

from sr.report.cli import main

main()
