"""deploybench: compare how one model deploys through TensorFlow and PyTorch."""

__version__ = "0.1.0"
