"""`python -m foldvision <command>`: the same as the `foldvision` console script."""

from foldvision.cli import main

main()
