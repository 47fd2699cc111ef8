"""`python -m localagg`: the command line (stages.cli), as the `localagg` console script."""

from stages.cli import main

main()
