"""Hyperparameter optimisation on Optuna with meta-learned warm starts (``metakit tune``)."""
