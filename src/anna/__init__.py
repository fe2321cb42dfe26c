"""anna: compress a neural network to a size budget with the least loss of output quality."""

__version__ = "0.1.0"
