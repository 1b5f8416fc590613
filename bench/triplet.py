"""Batched (per-image) vs per-triplet triplet loss: time of one forward + backward.

*Batched*: one forward of the P x K images, the B x B distance matrix, every triplet read from it
(``reid_core.losses.TripletMarginLoss``). *Per-triplet*: the way a triplet-input network is fed -
the anchor, positive and negative images of every triplet are forwarded (stacked, in chunks of
``--chunk`` triplets, gradients accumulated), so the cost grows with the number of triplets. Both
give the same loss and the same parameter gradients (checked here and in
``tests/losses/test_triplet.py``); reduction is the plain mean over triplets in both.

Prints one JSON line per miner, e.g.::

    python bench/triplet.py --p 8 --k 4 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_core.device import pick_device, set_seed  # noqa: E402
from reid_core.losses import TripletMarginLoss  # noqa: E402


def small_cnn(dim: int = 64) -> nn.Module:
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, dim))


def batched_step(model, images, labels, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(images), labels)
    loss.backward()
    return loss.detach(), loss_fn.last_stats["num_triplets"]


def per_triplet_step(model, images, labels, loss_fn, chunk):
    """Mine on a no-grad forward, then forward the members of every triplet."""
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        feats = model(images)
        dist = loss_fn.distance(feats)
        a, p, n = loss_fn.mine(feats, labels, dist)
    T = a.numel()
    dist_fn = loss_fn.distance
    total = torch.zeros((), device=images.device)
    for s in range(0, T, chunk):
        ia, ip, iN = a[s:s + chunk], p[s:s + chunk], n[s:s + chunk]
        out = model(torch.cat([images[ia], images[ip], images[iN]]))
        fa, fp, fn = out.split(ia.numel())
        terms = torch.relu(dist_fn.pairwise(fa, fp) - dist_fn.pairwise(fa, fn) + loss_fn.margin)
        loss = terms.sum() / T
        loss.backward()
        total += loss.detach()
    return total, T


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--p", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--miners", default="batch_hard,batch_all")
    ap.add_argument("--chunk", type=int, default=128, help="triplets per forward in the per-triplet mode")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    set_seed(0)
    # eval-mode BatchNorm: per-sample outputs do not depend on which images share a forward,
    # which is what makes the two modes compute the same function
    model = small_cnn().to(device).eval()
    B = args.p * args.k
    images = torch.randn(B, 3, args.height, args.width, device=device)
    labels = torch.arange(args.p, device=device).repeat_interleave(args.k)

    for miner in args.miners.split(","):
        loss_fn = TripletMarginLoss(margin=0.3, miner=miner, reduction="mean")
        batched_step(model, images, labels, loss_fn)  # warm-up
        t_b, (loss_b, T) = timed(lambda: batched_step(model, images, labels, loss_fn), args.repeats)
        g_b = [q.grad.clone() for q in model.parameters()]
        t_t, (loss_t, _) = timed(lambda: per_triplet_step(model, images, labels, loss_fn, args.chunk), args.repeats)
        g_t = [q.grad.clone() for q in model.parameters()]
        grad_diff = max(float((x - y).abs().max()) for x, y in zip(g_b, g_t))
        grad_scale = max(float(x.abs().max()) for x in g_b)
        print(json.dumps({
            "bench": "triplet", "model": "small_cnn", "device": device.type, "threads": args.threads,
            "p": args.p, "k": args.k, "image": [3, args.height, args.width], "miner": miner,
            "num_triplets": T, "images_forwarded_batched": B, "images_forwarded_per_triplet": 3 * T + B,
            "seconds_batched": round(t_b, 5), "seconds_per_triplet": round(t_t, 5),
            "time_ratio_per_triplet_over_batched": round(t_t / t_b, 2),
            "loss_batched": float(loss_b), "loss_per_triplet": float(loss_t),
            "max_abs_grad_diff": grad_diff, "max_abs_grad": grad_scale,
        }), flush=True)


if __name__ == "__main__":
    main()
