"""`python -m vared_convert ...` (so `torchrun -m vared_convert finetune ...` works)."""

from .cli import main

main()
