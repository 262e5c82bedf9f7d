"""`python -m reporter`: the same as the `mgh-reporter` command."""

from reporter.cli import main

main()
