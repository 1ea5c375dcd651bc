"""gft: a staged reproduction pipeline for Group Fine-Tuning (GFT) and its baselines."""

__version__ = "0.1.0"
