"""Choose pretraining checkpoints by their pretraining free energy (Munn & Wei, ICML 2025)."""

__version__ = "0.1.0"
