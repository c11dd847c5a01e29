"""netdsl: a declarative graph compiler and executor for convolutional neural networks."""
__version__ = "0.1.0"
