"""Evaluation: CMC / mAP / mINP (Market-1501 protocol), pseudo-label quality, plots.

``rerank`` (k-reciprocal re-ranking) is imported lazily by ``evaluate_features(..., rerank=True)``.
"""
from .plots import plot_cmc, plot_eps_sweep, plot_map_vs_time, plot_metrics_over_rounds
from .pseudo_quality import pair_counts, pseudo_label_quality
from .ranking import distance_matrix, evaluate_features, evaluate_rank, iter_distance_chunks, stable_rank_order

__all__ = [
    "evaluate_rank", "evaluate_features", "iter_distance_chunks", "distance_matrix", "stable_rank_order",
    "pseudo_label_quality", "pair_counts",
    "plot_cmc", "plot_metrics_over_rounds", "plot_eps_sweep", "plot_map_vs_time",
]
