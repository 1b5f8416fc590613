"""Plain, slow reference implementations written from the definitions (Python loops over floats).

Used by the tests of ``reid_core.losses`` to check the vectorised code. Nothing here is vectorised.
"""
from __future__ import annotations

import itertools
import math

import numpy as np


def normalize_row(v):
    n = math.sqrt(sum(float(a) * float(a) for a in v))
    return [float(a) / n for a in v] if n > 0 else [float(a) for a in v]


def euclid(u, v):
    return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(u, v)))


def cosine_dist(u, v):
    u, v = normalize_row(u), normalize_row(v)
    return 1.0 - sum(a * b for a, b in zip(u, v))


def dist_matrix(x, kind="euclidean", normalize=True, y=None):
    x = np.asarray(x, dtype=np.float64)
    y = x if y is None else np.asarray(y, dtype=np.float64)
    rows_x = [normalize_row(r) if normalize else list(r) for r in x]
    rows_y = [normalize_row(r) if normalize else list(r) for r in y]
    out = np.zeros((len(rows_x), len(rows_y)))
    for i, u in enumerate(rows_x):
        for j, v in enumerate(rows_y):
            if kind == "euclidean":
                out[i, j] = euclid(u, v)
            elif kind == "sq_euclidean":
                out[i, j] = euclid(u, v) ** 2
            else:
                out[i, j] = cosine_dist(u, v)
    return out


def triplets_all(labels):
    labels = list(labels)
    out = []
    for a in range(len(labels)):
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            for n in range(len(labels)):
                if labels[n] != labels[a]:
                    out.append((a, p, n))
    return out


def triplets_batch_hard(d, labels):
    labels = list(labels)
    out = []
    for a in range(len(labels)):
        pos = [j for j in range(len(labels)) if j != a and labels[j] == labels[a]]
        neg = [j for j in range(len(labels)) if labels[j] != labels[a]]
        if not pos or not neg:
            continue
        p = max(pos, key=lambda j: d[a][j])
        n = min(neg, key=lambda j: d[a][j])
        out.append((a, p, n))
    return out


def triplets_semi_hard(d, labels, margin):
    return [(a, p, n) for (a, p, n) in triplets_all(labels) if d[a][p] < d[a][n] < d[a][p] + margin]


def pairs_all(labels):
    labels = list(labels)
    pos, neg = [], []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            (pos if labels[i] == labels[j] else neg).append((i, j))
    return pos, neg


def triplet_value(dap, dan, margin, variant, pull_weight=0.002, pull_threshold=0.01):
    if variant == "hinge":
        return max(0.0, dap - dan + margin)
    if variant == "soft":
        return math.log1p(math.exp(dap - dan))
    # Cheng et al. 2016: hinge + beta * max(d(a,p), tau2)
    return max(0.0, dap - dan + margin) + pull_weight * max(dap, pull_threshold)


def reduce(values, reduction):
    if not values:
        return 0.0
    if reduction == "sum":
        return sum(values)
    if reduction == "mean":
        return sum(values) / len(values)
    nz = [v for v in values if v > 0]
    return sum(values) / max(len(nz), 1)


def monotone_paths(h, w):
    """Every right/down path from (0,0) to (h-1,w-1) as a list of cells."""
    for downs in itertools.combinations(range(h + w - 2), h - 1):
        i = j = 0
        cells = [(0, 0)]
        for step in range(h + w - 2):
            if step in downs:
                i += 1
            else:
                j += 1
            cells.append((i, j))
        yield cells
