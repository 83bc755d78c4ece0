"""seq2seq: attention LSTM translation models, trained, run and scored from the terminal.

The package root stays import-light (no torch) so that `seq2seq --help` starts fast;
import the rooms you need: `seq2seq.training`, `seq2seq.translation`, `seq2seq.checkpoint`, ...
"""

__version__ = "0.1.0"
