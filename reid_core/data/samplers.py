"""P x K identity sampling for contrastive / memory training.

Each batch holds ``P`` distinct identities with ``K`` instances each, laid out as
``[id_a]*K + [id_b]*K + ...`` (indices into the dataset). Policy:

* label ``-1`` (outliers / unknown) is never sampled; no valid label -> ``ValueError``.
* identities are visited in a shuffled cycle: every identity is drawn once before any is drawn
  again (a batch never holds an identity twice).
* ``P`` larger than the number of identities: every batch uses all identities (``p_eff`` =
  number of identities, so a batch has ``p_eff * K`` indices; use ``batch_size`` / PKBatchSampler).
* instances: with ``camids`` a random *anchor* is drawn, then the other K-1 instances are drawn
  without replacement from the identity's images taken by *other* cameras first, then from the
  anchor's camera; without ``camids`` K distinct random images. Only an identity with fewer than K
  images repeats images (all its images appear, the rest is drawn with replacement), so an
  identity with a single image is still usable. (Cluster-Contrast's RandomMultipleGallerySampler
  repeats other-camera images before using same-camera ones; we prefer distinct images.)
* ``num_iterations`` batches per epoch; default ``max(1, n_identities // p_eff)`` (each identity
  about once per epoch).
* deterministic for ``(seed, epoch)``: a local ``np.random.Generator``; call ``set_epoch(e)``
  before each epoch to get a new stream (iterating twice in the same epoch repeats the stream).

Use with a DataLoader either as ``DataLoader(ds, batch_sampler=PKBatchSampler(labels, ...))`` or
``DataLoader(ds, sampler=s, batch_size=s.batch_size, drop_last=False)`` with ``s = PKSampler(...)``.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name}: must be one-dimensional (shape {arr.shape})")
    if len(arr) and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: must hold integers (dtype {arr.dtype})")
    return arr.astype(np.int64)


class PKSampler(Sampler[int]):
    """Yield flat dataset indices, ``P * K`` per batch (see module docstring for the policy)."""

    def __init__(
        self,
        labels: Sequence[int],
        camids: Sequence[int] | None = None,
        p: int = 16,
        k: int = 16,
        num_iterations: int | None = None,
        seed: int = 0,
    ):
        labels = _to_numpy(labels, "labels")
        if int(p) < 1 or int(k) < 1:
            raise ValueError(f"p, k: must be >= 1 (got p={p}, k={k})")
        if camids is not None:
            camids = _to_numpy(camids, "camids")
            if len(camids) != len(labels):
                raise ValueError(f"camids: need one camera id per label ({len(labels)} labels, {len(camids)} camids)")
        valid = np.flatnonzero(labels >= 0)
        if len(valid) == 0:
            raise ValueError(f"labels: no sample with a label >= 0 among {len(labels)} (all outliers or empty)")
        if num_iterations is not None and int(num_iterations) < 1:
            raise ValueError(f"num_iterations: must be >= 1 or None (got {num_iterations})")

        order = valid[np.argsort(labels[valid], kind="stable")]
        ids, starts = np.unique(labels[order], return_index=True)
        self.identities = ids
        self._members = np.split(order, starts[1:])  # dataset indices of each identity, ascending
        self._cams = None if camids is None else [camids[m] for m in self._members]
        self.p = int(p)
        self.k = int(k)
        self.p_eff = min(self.p, len(ids))
        self.num_iterations = int(num_iterations) if num_iterations is not None else max(1, len(ids) // self.p_eff)
        self.seed = int(seed)
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        """Indices per batch, ``p_eff * k``."""
        return self.p_eff * self.k

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_iterations * self.batch_size

    def _instances(self, rng: np.random.Generator, j: int) -> np.ndarray:
        members, k = self._members[j], self.k
        n = len(members)
        if self._cams is None:
            if n >= k:
                return members[rng.choice(n, size=k, replace=False)]
            extra = rng.choice(n, size=k - n, replace=True)
            return members[np.concatenate([rng.permutation(n), extra])]
        cams = self._cams[j]
        a = int(rng.integers(n))
        rest = np.delete(np.arange(n), a)
        other = rng.permutation(rest[cams[rest] != cams[a]])
        same = rng.permutation(rest[cams[rest] == cams[a]])
        picked = np.concatenate([[a], other, same])[:k]
        if len(picked) < k:
            picked = np.concatenate([picked, rng.choice(n, size=k - len(picked), replace=True)])
        return members[picked]

    def batches(self) -> Iterator[list[int]]:
        """Yield each batch as a list of ``batch_size`` dataset indices."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n_ids, p = len(self.identities), self.p_eff
        perm, pos = rng.permutation(n_ids), 0
        for _ in range(self.num_iterations):
            chosen: list[int] = []
            deferred: list[int] = []
            while len(chosen) < p:
                if pos >= len(perm):
                    perm, pos = rng.permutation(n_ids), 0
                j = int(perm[pos])
                pos += 1
                (deferred if j in chosen else chosen).append(j)
            if deferred:  # drawn again right after a reshuffle: keep them for the next batch
                perm = np.concatenate([perm[:pos], deferred, perm[pos:]])
            yield np.concatenate([self._instances(rng, j) for j in chosen]).tolist()

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch


class PKBatchSampler(Sampler[list[int]]):
    """Batch sampler over :class:`PKSampler`: ``DataLoader(ds, batch_sampler=PKBatchSampler(...))``.

    Same arguments as :class:`PKSampler`; ``len()`` is the number of batches per epoch.
    """

    def __init__(self, labels, camids=None, p: int = 16, k: int = 16, num_iterations: int | None = None, seed: int = 0):
        self.sampler = PKSampler(labels, camids=camids, p=p, k=k, num_iterations=num_iterations, seed=seed)

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.sampler.num_iterations

    def __iter__(self) -> Iterator[list[int]]:
        return self.sampler.batches()
