"""`python -m fluxagent` runs the command-line interface."""

from fluxagent.cli.main import main

main()
