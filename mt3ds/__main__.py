"""`python -m mt3ds ...` runs the CLI (the GPU machines use this with PYTHONPATH set)."""
from mt3ds.cli import main

main()
