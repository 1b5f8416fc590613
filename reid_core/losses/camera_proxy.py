"""Camera-aware proxy memory: intra- and inter-camera contrastive losses on pseudo-labels.

A pseudo-label cluster usually spans several cameras, and early features are dominated by the
camera (background, light, viewpoint). The cluster memory pulls every image towards one centroid,
which in practice is nearest to the cluster's largest camera. A *proxy* per (cluster, camera) pair
keeps one centre per camera view of a cluster, and two losses use them (the scheme of
camera-aware proxy methods in the unsupervised re-ID literature, written here from the formulas):

With ``x`` the normalised feature of a sample of cluster ``y`` seen by camera ``c``, ``p_j`` the
proxies (unit vectors) with cluster ``y_j`` and camera ``c_j``, ``s_j = x . p_j / temp`` and ``o``
the sample's own proxy (``y_o = y``, ``c_o = c``)::

    L_intra = -log( exp(s_o) / sum_{j : c_j = c} exp(s_j) )          (only proxies of its camera)

    P = {j : y_j = y}                                                  (its cluster, every camera)
    N = the ``hard_negatives`` largest s_j with y_j != y               (hardest other clusters)
    L_inter = -1/|P| sum_{p in P} log( exp(s_p) / (exp(s_p) + sum_{n in N} exp(s_n)) )

    loss = intra_weight * mean(L_intra) + inter_weight * mean(L_inter)

The intra-camera term separates identities *within* a camera, where the camera signature does not
help; the inter-camera term pulls the views of one cluster together across cameras and pushes the
closest other clusters away. Proxies are initialised as the renormalised mean feature of their
(cluster, camera) group and updated like the cluster memory's ``"momentum"`` mode
(``p <- normalize(mu p + (1 - mu) mean of the batch's samples of that group)``), without gradient.
Camera ids are metadata of the images, not identities: nothing here reads ground truth.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CameraProxyMemory(nn.Module):
    """One proxy per (cluster, camera) pair; see the module docstring for the losses.

    Args:
        num_features: feature dimension.
        temp: softmax temperature (0.07).
        momentum: weight of the old proxy in the update (0.2).
        hard_negatives: negatives per sample in the inter-camera loss (50).
        intra_weight, inter_weight: weights of the two terms (1.0 and 0.5).
    """

    def __init__(self, num_features: int, temp: float = 0.07, momentum: float = 0.2, hard_negatives: int = 50,
                 intra_weight: float = 1.0, inter_weight: float = 0.5):
        super().__init__()
        if int(num_features) <= 0:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if not temp > 0 or not 0 <= momentum <= 1:
            raise ValueError(f"need temp > 0 and 0 <= momentum <= 1, got {temp}, {momentum}")
        if int(hard_negatives) < 1:
            raise ValueError(f"hard_negatives must be >= 1, got {hard_negatives}")
        if intra_weight < 0 or inter_weight < 0:
            raise ValueError(f"weights must be >= 0, got {intra_weight}, {inter_weight}")
        self.num_features = int(num_features)
        self.temp = float(temp)
        self.momentum = float(momentum)
        self.hard_negatives = int(hard_negatives)
        self.intra_weight = float(intra_weight)
        self.inter_weight = float(inter_weight)
        self.register_buffer("features", torch.zeros(0, self.num_features))
        self.register_buffer("proxy_label", torch.zeros(0, dtype=torch.long))
        self.register_buffer("proxy_cam", torch.zeros(0, dtype=torch.long))
        self.register_buffer("_keys", torch.zeros(0, dtype=torch.long))  # sorted label * n_cams + cam
        self.n_cams = 1

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, proxies={self.features.shape[0]}, temp={self.temp}, "
                f"momentum={self.momentum}, hard_negatives={self.hard_negatives}, "
                f"intra_weight={self.intra_weight}, inter_weight={self.inter_weight}")

    @property
    def num_proxies(self) -> int:
        return int(self.features.shape[0])

    @torch.no_grad()
    def init_proxies(self, features, labels, camids) -> "CameraProxyMemory":
        """Proxies from ``features`` ``(N, D)``, cluster ``labels`` (``-1`` ignored) and ``camids``
        (``>= 0``); proxies are ordered by (label, camera)."""
        dev = self.features.device
        feats = torch.as_tensor(features).to(device=dev, dtype=self.features.dtype)
        labs = torch.as_tensor(labels).to(dev).long()
        cams = torch.as_tensor(camids).to(dev).long()
        if feats.dim() != 2 or feats.shape[1] != self.num_features:
            raise ValueError(f"features: expected shape (N, {self.num_features}), got {tuple(feats.shape)}")
        if labs.shape != (feats.shape[0],) or cams.shape != (feats.shape[0],):
            raise ValueError(f"labels / camids: expected shape ({feats.shape[0]},), got {tuple(labs.shape)} / "
                             f"{tuple(cams.shape)}")
        keep = labs >= 0
        feats, labs, cams = feats[keep], labs[keep], cams[keep]
        if labs.numel() == 0:
            raise ValueError("labels: no clustered sample (all outliers); no proxy to build")
        if int(cams.min()) < 0:
            raise ValueError("camids: camera-aware proxies need a known camera id (>= 0) for every clustered sample")
        self.n_cams = int(cams.max()) + 1
        keys = labs * self.n_cams + cams
        uniq, group = torch.unique(keys, sorted=True, return_inverse=True)
        sums = torch.zeros(uniq.numel(), feats.shape[1], dtype=feats.dtype, device=dev)
        sums.index_add_(0, group, F.normalize(feats, dim=1))
        self.features = F.normalize(sums, dim=1)
        self._keys = uniq
        self.proxy_label = uniq // self.n_cams
        self.proxy_cam = uniq % self.n_cams
        return self

    def proxy_index(self, labels: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        """Index of the proxy of each (label, camera) pair; ``ValueError`` for an unknown pair."""
        keys = labels.long() * self.n_cams + camids.long()
        pos = torch.searchsorted(self._keys, keys).clamp(max=max(self.num_proxies - 1, 0))
        if self.num_proxies == 0 or not bool((self._keys[pos] == keys).all()) or bool((camids >= self.n_cams).any()):
            raise ValueError("labels / camids: a (cluster, camera) pair of the batch has no proxy "
                             "(proxies come from this round's pseudo-labels and camera ids)")
        return pos

    def forward(self, inputs: torch.Tensor, labels, camids) -> tuple[torch.Tensor, dict[str, float]]:
        if self.num_proxies == 0:
            raise RuntimeError("CameraProxyMemory: call init_proxies first")
        labels = torch.as_tensor(labels, device=inputs.device).long()
        camids = torch.as_tensor(camids, device=inputs.device).long()
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            x = F.normalize(inputs.to(self.features.dtype), dim=1)
            own = self.proxy_index(labels, camids)
            sims = x @ self.features.t() / self.temp                                      # (B, P)
            same_cam = self.proxy_cam.unsqueeze(0) == camids.unsqueeze(1)
            intra = torch.logsumexp(sims.masked_fill(~same_cam, float("-inf")), dim=1) - sims.gather(1, own[:, None])[:, 0]
            pos = self.proxy_label.unsqueeze(0) == labels.unsqueeze(1)                    # (B, P)
            n_neg = min(self.hard_negatives, self.num_proxies)
            neg_sims = sims.masked_fill(pos, float("-inf")).topk(n_neg, dim=1).values     # (B, n_neg), may hold -inf
            neg_lse = torch.logsumexp(neg_sims, dim=1, keepdim=True)                       # -inf when no negative
            per_pos = torch.logaddexp(sims, neg_lse.expand_as(sims)) - sims                # -log softmax of each positive
            inter = (per_pos * pos).sum(1) / pos.sum(1)
            loss = self.intra_weight * intra.mean() + self.inter_weight * inter.mean()
        return loss, {"loss_cam_intra": float(intra.mean().detach()), "loss_cam_inter": float(inter.mean().detach())}

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, labels, camids) -> None:
        """Momentum update of the proxies present in the batch with their batch mean (not in place)."""
        labels = torch.as_tensor(labels, device=inputs.device).long()
        camids = torch.as_tensor(camids, device=inputs.device).long()
        if labels.numel() == 0:
            return
        x = F.normalize(inputs.detach().to(self.features.dtype), dim=1)
        idx = self.proxy_index(labels, camids)
        counts = torch.bincount(idx, minlength=self.num_proxies)
        present = counts > 0
        sums = torch.zeros_like(self.features).index_add_(0, idx, x)
        mean = sums[present] / counts[present].unsqueeze(1).to(x.dtype)
        new = self.features.clone()
        new[present] = F.normalize(self.momentum * self.features[present] + (1 - self.momentum) * mean, dim=1)
        self.features = new


__all__ = ["CameraProxyMemory"]
