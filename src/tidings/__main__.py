"""`python -m tidings` runs the CLI."""

from tidings.cli import main

main()
