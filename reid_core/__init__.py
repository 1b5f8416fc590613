"""Unsupervised person re-identification library (no Prefect inside)."""
__version__ = "0.1.0"
