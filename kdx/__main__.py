"""``python -m kdx`` (used by ``torchrun -m kdx ...``)."""

from kdx.cli import main

main()
