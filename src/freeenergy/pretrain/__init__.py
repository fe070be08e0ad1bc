"""Pretraining sweeps: SGD on the upstream classes, checkpoints at configured epochs.

``trainer`` holds the training loop (``run_pretraining``); ``sweeps`` the sweep definitions, importable
without torch (the analysis uses it).
"""
