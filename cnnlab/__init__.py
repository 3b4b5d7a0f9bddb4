"""cnnlab: train, understand and trust convolutional networks on your own images."""

from cnnlab.errors import CnnlabError, ImageReadError

__all__ = ["CnnlabError", "ImageReadError"]
__version__ = "0.1.0"
