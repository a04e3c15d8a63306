"""`python -m training.heldout_scenes`: the command line."""
from .writer import main

main()
