"""torch.distributed helpers for DistributedDataParallel training under ``torchrun``.

Backend: ``gloo`` on CPU, ``nccl`` on CUDA (one process per GPU, ``LOCAL_RANK`` picks the GPU).
Nothing here starts processes: ``torchrun`` does (see docs/RUNNING_ON_A_CLUSTER.md), or a test's
``torch.multiprocessing.spawn``.

How training is split (see :func:`reid_core.train.train_epoch`): every rank draws the same global
P x K batch (``world_size * p`` identities x ``k`` images, same seed) and trains on its own
``p`` identities (``p * k`` images: the **per-device batch**, recorded in the training log). The
cluster memory is updated from the features of all ranks (:func:`all_gather_cat`), so every rank
holds the same memory; the label-preserving loss sees the support samples of all ranks
(:func:`all_gather_with_grad`); DDP averages the gradients. BatchNorm statistics stay per device,
as in every DDP run without SyncBatchNorm (which PyTorch offers on GPUs only).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["rank_and_world", "in_process_group", "is_distributed", "all_gather_cat", "all_gather_with_grad", "all_reduce_mean",
           "init_from_env", "backend_for"]


def in_process_group() -> bool:
    """True inside an initialised process group (of any size: ``torchrun --nproc-per-node 1`` too)."""
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: str = "auto") -> torch.device:
    """Join the process group ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``...) and return this rank's device: ``cuda:LOCAL_RANK`` on a GPU node, else CPU."""
    use_cuda = torch.cuda.is_available() and device != "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend_for(dev))
    return dev


@torch.no_grad()
def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (same shape on every rank) of all ranks along dim 0, in rank order (no gradient)."""
    if not is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all-gather along dim 0. Backward: the gradient of the gathered tensor summed over
    the ranks (one all-reduce), this rank's rows returned."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        ctx.rows = t.shape[0]
        ctx.rank = dist.get_rank()
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather_cat`, but gradients flow back to the rank that produced each row
    (every rank's loss may depend on every rank's rows: their gradients are summed)."""
    if not is_distributed():
        return t
    return _AllGatherWithGrad.apply(t)


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a float over the ranks (for logging the global-batch loss)."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()
