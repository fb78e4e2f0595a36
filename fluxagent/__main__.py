"""`python -m fluxagent` runs the command-line interface."""

from fluxagent.cli.entry import main

main()
