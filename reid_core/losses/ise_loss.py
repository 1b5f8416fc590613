"""ISE training objective: cluster-memory InfoNCE on real + support samples, plus the
label-preserving (LP) loss (Zhang et al., "Implicit Sample Extension for Unsupervised Person
Re-Identification", CVPR 2022).

Support samples come from :mod:`reid_core.cluster.ise` (progressive linear interpolation towards the
nearest other centroids of the memory).

Label-preserving loss (what :func:`label_preserving_loss` computes). With ``f_i`` the normalised real
feature of sample ``i`` (label ``y_i``), ``S`` the support samples with the labels of the real samples
they came from, ``s(a, b) = a . b`` (cosine, all unit vectors) and ``tau`` the temperature (0.6)::

    pos_i   = min_{j in S, label_j == y_i} s(f_i, s_j)            the hardest (least similar) positive
    neg_i^l = max_{j in S, label_j == l}   s(f_i, s_j)            for every other label l in the batch
                                                                  (the hardest negative per identity)
    L_i     = -log( exp(pos_i / tau) / (exp(pos_i / tau) + sum_l exp(neg_i^l / tau)) )
    L_lp    = mean_i L_i

It keeps every support sample closer to its own identity than to the other identities of the batch,
so the interpolation does not push it over the border. The reference code groups negatives by
reshaping them into consecutive blocks of ``k * num_instances`` (which assumes a P x K batch) and adds
``1e-6`` inside the fraction and the log; this implementation groups by label explicitly (identical
for P x K batches, also correct for other batches) and uses a stable log-sum-exp without epsilons.
When no other label is present, ``L_i = 0``.

:class:`ISELoss` ablation switches (``use_interp`` / ``use_lp``):

* both off: baseline Cluster-Contrast, exactly ``memory(feats, labels)``;
* ``use_interp`` only: memory loss over real + support samples (support samples keep the real
  sample's pseudo-label), no LP term;
* ``use_lp`` only: support samples are still generated (the LP loss needs them) but are **not** fed to
  the memory loss, which sees the real samples only;
* both on: full ISE, ``loss = L_memory(real + support) + lp_weight * L_lp``.

Memory update: after the loss, :meth:`ClusterMemory.update` runs on the real samples, and - when
``update_with_support`` (default True, as in the reference code, whose memory receives the
concatenated batch) and interpolation is on - on the support samples too.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from reid_core.cluster.ise import lambda_schedule, nearest_clusters, support_samples
from reid_core.losses.cluster_memory import ClusterMemory


LP_POSITIVES = ("hardest", "own")


def label_preserving_loss(real: torch.Tensor, support: torch.Tensor, labels: torch.Tensor,
                          support_labels: torch.Tensor, temp: float = 0.6, positive: str = "hardest") -> torch.Tensor:
    """Label-preserving loss (formula in the module docstring). ``real`` ``(B, D)`` and ``support``
    ``(S, D)`` are normalised here; every label of ``real`` must appear in ``support_labels``.

    ``positive``: ``"hardest"`` (the paper's choice: the least similar support sample of the same
    label) or ``"own"``: the mean similarity to the support samples generated from this very real
    sample (rows ``i * k .. i * k + k - 1`` of ``support``, so ``S`` must be a multiple of ``B``). On an
    impure cluster the hardest same-label support sample usually comes from another person; the
    sample's own support samples always come from itself."""
    if positive not in LP_POSITIVES:
        raise ValueError(f"positive must be one of {LP_POSITIVES}, got {positive!r}")
    if real.dim() != 2 or support.dim() != 2 or real.shape[1] != support.shape[1]:
        raise ValueError(f"real / support: expected (B, D) and (S, D), got {tuple(real.shape)} and "
                         f"{tuple(support.shape)}")
    if not temp > 0:
        raise ValueError(f"temp must be > 0, got {temp}")
    labels = torch.as_tensor(labels, device=real.device).long()
    support_labels = torch.as_tensor(support_labels, device=real.device).long()
    if labels.shape != (real.shape[0],) or support_labels.shape != (support.shape[0],):
        raise ValueError("labels / support_labels: shapes must match the rows of real / support")
    if real.shape[0] == 0:
        return real.sum() * 0.0
    sim = F.normalize(real, dim=1) @ F.normalize(support, dim=1).t() / temp        # (B, S)
    same = labels.unsqueeze(1) == support_labels.unsqueeze(0)
    if not bool(same.any(dim=1).all()):
        raise ValueError("support_labels: some real samples have no support sample of their label")
    if positive == "own":
        if support.shape[0] % real.shape[0]:
            raise ValueError(f"positive='own': support rows ({support.shape[0]}) must be k x the real rows "
                             f"({real.shape[0]})")
        k = support.shape[0] // real.shape[0]
        rows = torch.arange(real.shape[0], device=real.device)
        own_sim = sim.reshape(real.shape[0], real.shape[0], k)[rows, rows]              # (B, k)
        pos = own_sim.mean(dim=1)
    else:
        pos = torch.where(same, sim, torch.full_like(sim, float("inf"))).amin(dim=1)    # (B,)
    groups, group_of = torch.unique(support_labels, return_inverse=True)           # G labels
    neg = torch.full((sim.shape[0], groups.numel()), float("-inf"), dtype=sim.dtype, device=sim.device)
    neg = neg.scatter_reduce(1, group_of.unsqueeze(0).expand_as(sim), sim, reduce="amax", include_self=True)
    own = groups.unsqueeze(0) == labels.unsqueeze(1)                                # (B, G)
    neg = neg.masked_fill(own, float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return (torch.logsumexp(logits, dim=1) - pos).mean()


class ISELoss(nn.Module):
    """Cluster-memory loss with Implicit Sample Extension.

    Args:
        memory: the round's :class:`ClusterMemory` (centroids for directions and the InfoNCE).
        lambda0: base interpolation degree (``lambda`` ends at ``lambda0 / 2``).
        k: nearest other centroids per sample (support samples per real sample).
        use_interp: feed support samples to the memory loss.
        use_lp: add the label-preserving loss.
        lp_weight: LP weight (0.1 Market setting; 0.01 for MSMT17-scale data).
        lp_temp: LP temperature.
        update_with_support: also update the memory with the support samples (reference behaviour).

    ``forward(feats, labels, t, T, update=True) -> (loss, stats)``; ``stats`` holds floats
    ``loss_memory``, ``loss_lp`` (nan when LP is off), ``lambda`` and ``mean_cos_support`` (mean cosine
    between each real sample and its support samples; both nan when no support sample is generated).
    """

    def __init__(self, memory: ClusterMemory, lambda0: float = 1.0, k: int = 1, use_interp: bool = True,
                 use_lp: bool = True, lp_weight: float = 0.1, lp_temp: float = 0.6,
                 update_with_support: bool = True, lp_positive: str = "hardest"):
        super().__init__()
        if lp_positive not in LP_POSITIVES:
            raise ValueError(f"lp_positive must be one of {LP_POSITIVES}, got {lp_positive!r}")
        if not isinstance(memory, ClusterMemory):
            raise ValueError(f"memory: expected a ClusterMemory, got {type(memory).__name__}")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if lambda0 < 0 or lp_weight < 0 or not lp_temp > 0:
            raise ValueError(f"lambda0 and lp_weight must be >= 0 and lp_temp > 0 "
                             f"(got {lambda0}, {lp_weight}, {lp_temp})")
        self.memory = memory
        self.lambda0 = float(lambda0)
        self.k = int(k)
        self.use_interp = bool(use_interp)
        self.use_lp = bool(use_lp)
        self.lp_weight = float(lp_weight)
        self.lp_temp = float(lp_temp)
        self.update_with_support = bool(update_with_support)
        #: distributed training sets these (``reid_core.distributed``): the label-preserving loss then
        #: takes its negatives from the support samples of every rank, as one process with the whole
        #: batch would (``gather_with_grad`` lets gradients reach the rank that made each sample)
        self.gather: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.gather_with_grad: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.lp_positive = lp_positive

    @property
    def generates_support(self) -> bool:
        return self.use_interp or self.use_lp

    def extra_repr(self) -> str:
        return (f"lambda0={self.lambda0}, k={self.k}, use_interp={self.use_interp}, use_lp={self.use_lp}, "
                f"lp_weight={self.lp_weight}, lp_temp={self.lp_temp}, lp_positive={self.lp_positive!r}, "
                f"update_with_support={self.update_with_support}")

    def forward(self, feats: torch.Tensor, labels, t: float, T: float, update: bool = True,
                active: bool = True):
        """Loss of one batch at global iteration ``t`` of ``T``. ``active=False`` (ISE's warm-up gate)
        computes the plain cluster-memory loss and update, as if ISE were off."""
        mem = self.memory
        labels = torch.as_tensor(labels, device=feats.device).long()
        nan = float("nan")
        stats = {"loss_memory": nan, "loss_lp": nan, "lambda": nan, "mean_cos_support": nan}
        with torch.autocast(device_type=feats.device.type, enabled=False):
            x = feats.to(mem.features.dtype)
            if not (self.generates_support and active):
                loss = mem(x, labels)
                stats["loss_memory"] = float(loss.detach())
                if update:
                    mem.update(x.detach(), labels)
                return loss, stats
            if self.k > mem.num_clusters - 1:
                raise ValueError(f"k={self.k} needs at least {self.k + 1} clusters, the memory has "
                                 f"{mem.num_clusters}")
            lam = lambda_schedule(t, T, self.lambda0)
            f_hat = F.normalize(x, dim=1)
            centroids = mem.features.detach()
            nn_idx = nearest_clusters(f_hat, labels, centroids, self.k)
            sup = support_samples(f_hat, labels, centroids, nn_idx, lam)
            sup_labels = labels.repeat_interleave(self.k)
            if self.use_interp:
                loss_mem = mem(torch.cat([f_hat, sup]), torch.cat([labels, sup_labels]))
            else:
                loss_mem = mem(x, labels)
            loss = loss_mem
            if self.use_lp:
                if self.gather_with_grad is not None and self.gather is not None:
                    if self.lp_positive == "own":
                        raise NotImplementedError("lp_positive='own' is not supported in distributed training")
                    loss_lp = label_preserving_loss(f_hat, self.gather_with_grad(sup), labels,
                                                    self.gather(sup_labels), self.lp_temp, self.lp_positive)
                else:
                    loss_lp = label_preserving_loss(f_hat, sup, labels, sup_labels, self.lp_temp, self.lp_positive)
                loss = loss + self.lp_weight * loss_lp
                stats["loss_lp"] = float(loss_lp.detach())
            with torch.no_grad():
                cos = (f_hat.detach().repeat_interleave(self.k, dim=0) * sup.detach()).sum(1)
            stats.update(loss_memory=float(loss_mem.detach()), mean_cos_support=float(cos.mean()),
                         **{"lambda": lam})
            if update:
                if self.use_interp and self.update_with_support:
                    mem.update(torch.cat([f_hat, sup]).detach(), torch.cat([labels, sup_labels]))
                else:
                    mem.update(x.detach(), labels)
        return loss, stats


__all__ = ["ISELoss", "LP_POSITIVES", "label_preserving_loss"]
