"""Stages of a run as plain functions (paths in, paths out) and the plain loop over rounds."""
from .config import RunConfig
from .loop import run_pipeline, run_round, round_paths

__all__ = ["RunConfig", "run_pipeline", "run_round", "round_paths"]
