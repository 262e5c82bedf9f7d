"""mgh-reporter as its deb or rpm installs it: /usr/bin/mgh-reporter runs this directory."""

from reporter.cli import main

main()
