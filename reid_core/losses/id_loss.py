"""Identity (classification) loss with label smoothing, optional attribute heads, and a classifier head.

Cross-entropy with label smoothing (Szegedy et al. 2016): the target distribution is
``q = (1 - epsilon) * onehot(y) + epsilon / C`` and ``l_i = -sum_c q_c log softmax(z_i)_c``
(``epsilon=0.1`` by default; ``epsilon=0`` is plain cross-entropy).

Attribute heads (Lin et al. 2019, "Improving person re-identification by attribute and identity
learning"): each attribute ``j`` has logits ``(B, V_j)`` and integer targets ``(B,)`` (``-1`` =
unknown, ignored); its loss is a plain cross-entropy, and the objective is::

    L = lambda_id * L_ID + mean_j L_attr_j

An attribute with no known target in the batch contributes 0 (and still counts in the mean).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import attached_zero, check_labels


def check_logits_targets(logits, targets, logits_name: str = "logits", targets_name: str = "labels") -> torch.Tensor:
    """Check ``(B, C)`` float logits and ``(B,)`` integer targets; errors name the argument."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{logits_name}: expected float logits of shape (batch, classes), got {shape}")
    return check_labels(targets, logits.shape[0], name=targets_name, device=logits.device)


def label_smoothing_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1,
                                  reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against ``(1 - epsilon) * onehot + epsilon / C`` (see the module docstring)."""
    targets = check_logits_targets(logits, targets, "logits", "labels")
    C = logits.shape[1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= C):
        raise ValueError(f"labels: must lie in [0, {C}), got range [{int(targets.min())}, {int(targets.max())}]")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon: must be in [0, 1), got {epsilon}")
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, targets.unsqueeze(1)).squeeze(1)
    uniform = -logp.mean(1)
    losses = (1.0 - epsilon) * nll + epsilon * uniform
    if reduction == "none":
        return losses
    if losses.numel() == 0:
        return attached_zero(logits)
    return losses.sum() if reduction == "sum" else losses.mean()


class CrossEntropyLabelSmooth(nn.Module):
    """Module form of :func:`label_smoothing_cross_entropy`."""

    def __init__(self, epsilon: float = 0.1, reduction: str = "mean"):
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon: must be in [0, 1), got {epsilon}")
        self.epsilon = float(epsilon)
        self.reduction = reduction

    def forward(self, logits, targets):
        return label_smoothing_cross_entropy(logits, targets, self.epsilon, self.reduction)


class IDLoss(nn.Module):
    """``lambda_id * CE_ls(logits, labels) + mean of attribute cross-entropies``.

    ``forward(logits, labels, attribute_logits=None, attribute_targets=None)``; the two attribute
    arguments are sequences of equal length. ``last_stats`` holds ``loss_id`` and ``loss_attr``
    (floats; ``loss_attr`` is 0.0 without attributes) and ``num_attributes``.
    """

    def __init__(self, epsilon: float = 0.1, lambda_id: float = 1.0):
        super().__init__()
        if lambda_id < 0:
            raise ValueError(f"lambda_id: must be >= 0, got {lambda_id}")
        self.ce = CrossEntropyLabelSmooth(epsilon)
        self.lambda_id = float(lambda_id)
        self.last_stats: dict = {}

    def forward(self, logits, labels, attribute_logits: Optional[Sequence[torch.Tensor]] = None,
                attribute_targets: Optional[Sequence] = None) -> torch.Tensor:
        loss_id = self.ce(logits, labels)
        loss = self.lambda_id * loss_id
        attr = attached_zero(logits)
        n_attr = 0
        if attribute_logits is not None or attribute_targets is not None:
            if attribute_logits is None or attribute_targets is None or len(attribute_logits) != len(attribute_targets):
                raise ValueError("attribute_logits / attribute_targets: give both, with one target vector per attribute head")
            n_attr = len(attribute_logits)
            terms = []
            for j, (z, t) in enumerate(zip(attribute_logits, attribute_targets)):
                t = check_logits_targets(z, t, f"attribute_logits[{j}]", f"attribute_targets[{j}]")
                known = t >= 0
                if t.numel() and int(t.max()) >= z.shape[1]:
                    raise ValueError(f"attribute_targets[{j}]: values must lie in [-1, {z.shape[1]}), got max {int(t.max())}")
                if bool(known.any()):
                    terms.append(F.cross_entropy(z[known], t[known]))
                else:
                    terms.append(attached_zero(z))
            if terms:
                attr = torch.stack(terms).mean()
                loss = loss + attr
        self.last_stats = {"loss_id": float(loss_id.detach()), "loss_attr": float(attr.detach()), "num_attributes": n_attr}
        return loss


class IDHead(nn.Module):
    """BN-neck classifier: ``BatchNorm1d`` (bias frozen at 0, as in the BNNeck of Luo et al. 2019)
    followed by a bias-free ``Linear``. ``forward(feat) -> logits``; ``forward(feat,
    return_feat=True) -> (bn_feat, logits)``."""

    def __init__(self, in_dim: int, num_classes: int, bn: bool = True):
        super().__init__()
        if in_dim < 1 or num_classes < 1:
            raise ValueError(f"in_dim and num_classes must be >= 1, got {in_dim}, {num_classes}")
        self.bn = nn.BatchNorm1d(in_dim) if bn else nn.Identity()
        if bn:
            self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(in_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feat: torch.Tensor, return_feat: bool = False):
        bn_feat = self.bn(feat)
        logits = self.classifier(bn_feat)
        return (bn_feat, logits) if return_feat else logits


ClassifierHead = IDHead
