"""Clustering for pseudo-labels: sparse k-reciprocal Jaccard distance, k-NN search, DBSCAN/HDBSCAN.

ISE support samples live in :mod:`reid_core.cluster.ise` (import it directly).
"""
from .jaccard import (
    compute_jaccard_distance,
    jaccard_from_encoding,
    k_reciprocal_encoding,
    reciprocal_sets,
    sparse_distance_to_dense,
)
from .knn import KnnResult, knn_recall, knn_search, normalize_features
from .pseudo_labels import cluster_features, cluster_stats, eps_sweep, relabel_contiguous

__all__ = [
    "compute_jaccard_distance",
    "jaccard_from_encoding",
    "k_reciprocal_encoding",
    "reciprocal_sets",
    "sparse_distance_to_dense",
    "KnnResult",
    "knn_recall",
    "knn_search",
    "normalize_features",
    "cluster_features",
    "cluster_stats",
    "eps_sweep",
    "relabel_contiguous",
]
