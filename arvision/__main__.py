"""``python -m arvision`` (and ``torchrun -m arvision``) runs the command line."""

from .cli import main

main()
