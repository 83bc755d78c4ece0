"""`python -m seq2seq` (and `torchrun -m seq2seq`) runs the command-line app."""

from cli.main import main

main()
