"""`python -m cnnlab` runs the CLI."""

from cnnlab.cli import main

main()
