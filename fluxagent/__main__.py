"""`python -m fluxagent` runs the command-line interface."""

from fluxagent.cli import main

main()
