"""Export a re-ID model to ONNX, check it against torch with onnxruntime, time both, quantise.

Preprocessing contract of the exported graph (recorded in the model's metadata too):

* input ``images``: **uint8** (B, H, W, 3), RGB, already resized to the model's H x W (the project
  resizes with PIL's bicubic filter; :func:`reid_core.features.load_image_uint8` does exactly that);
  the batch axis is dynamic, H and W are fixed at export time;
* **inside the graph**: cast to float, HWC -> CHW, scale to [0, 1] and ImageNet mean/std
  normalisation. Do *not* normalise before feeding the graph (that would normalise twice);
* output ``features``: float32 (B, D), L2-normalised (cosine similarity = dot product).

Resizing is left outside the graph on purpose: ONNX's bicubic ``Resize`` does not reproduce PIL's
(antialiased) bicubic filter, and the features must match the ones the run was evaluated with.

The graph is built from an fp32 inference copy of the model (conv + BN folded; no bf16), so the
reference the check compares against is the fp32 torch forward.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .features import IMAGENET_MEAN, IMAGENET_STD, decode_batch, normalize_uint8_batch
from .io.atomic import atomic_path

__all__ = ["ExportWrapper", "export_onnx", "onnx_session", "onnx_features", "check_onnx", "time_backends",
           "quantize_int8", "fp32_conv_nodes", "onnx_metadata"]

INPUT_NAME = "images"
OUTPUT_NAME = "features"


class ExportWrapper(nn.Module):
    """uint8 (B, H, W, 3) RGB -> L2-normalised float32 (B, D): normalisation inside, resize outside."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        # x / (255 std) - mean / std, the same arithmetic as reid_core.features.normalize_uint8_batch
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", mean / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        x = x * self.scale - self.shift
        out = self.net(x)
        if isinstance(out, dict):
            out = out["bn_feat"]
        return F.normalize(out, dim=1)


def _fp32_inference_net(model: nn.Module) -> nn.Module:
    from .models.inference import inference_copy

    return inference_copy(model, bf16=False, fuse_bn=True).cpu().float()


def onnx_metadata(model: nn.Module, height: int, width: int, checkpoint: str | None = None) -> dict[str, str]:
    config = getattr(model, "config", {}) or {}
    return {
        "reid.backbone": str(config.get("name", "unknown")),
        "reid.input": f"uint8 (batch, {height}, {width}, 3) RGB, resized to {height}x{width} with bicubic filtering",
        "reid.preprocessing": "inside the graph: /255, ImageNet mean/std normalisation; resize outside (do not normalise again)",
        "reid.mean": json.dumps(list(IMAGENET_MEAN)),
        "reid.std": json.dumps(list(IMAGENET_STD)),
        "reid.output": "float32 (batch, D), L2-normalised",
        "reid.height": str(height),
        "reid.width": str(width),
        "reid.checkpoint": os.path.basename(checkpoint) if checkpoint else "",
        "reid.model_config": json.dumps(config, sort_keys=True),
    }


def export_onnx(model: nn.Module, out_path: str | os.PathLike, height: int, width: int,
                checkpoint: str | None = None, opset: int = 18) -> Path:
    """Write ``model`` as ONNX to ``out_path`` (atomically): see the module docstring for the contract.

    The batch axis is dynamic (checked after export by running batches of 1 and 3).
    """
    import onnx

    out_path = Path(out_path)
    wrapper = ExportWrapper(_fp32_inference_net(model)).eval()
    example = torch.zeros(2, height, width, 3, dtype=torch.uint8)
    with atomic_path(out_path) as tmp:
        onnx_tmp = tmp.with_suffix(".onnx")
        try:
            batch = torch.export.Dim("batch", min=1, max=65536)
            program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], opset_version=opset,
                                        dynamic_shapes={"images": {0: batch}}, external_data=False,
                                        verbose=False)
            program.save(str(onnx_tmp))
            proto = onnx.load(str(onnx_tmp))
        finally:
            if onnx_tmp.exists():
                onnx_tmp.unlink()
        for key, value in onnx_metadata(model, height, width, checkpoint).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return out_path


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for ``path`` (``threads`` intra-op threads; None = onnxruntime's default)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model does not exist")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ValueError(f"{path}: onnxruntime cannot load the model ({exc})") from exc


def onnx_features(session, paths: Sequence[str | os.PathLike], height: int, width: int,
                  batch_size: int = 64) -> np.ndarray:
    """Features of the image files with an onnxruntime session (images decoded + resized as in torch)."""
    out = []
    for start in range(0, len(paths), batch_size):
        batch = decode_batch([os.fspath(p) for p in paths[start:start + batch_size]], height, width).numpy()
        out.append(session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0])
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)


def _torch_fp32_features(model: nn.Module, uint8_batches: list[torch.Tensor]) -> np.ndarray:
    net = _fp32_inference_net(model)
    feats = []
    with torch.inference_mode():
        for b in uint8_batches:
            x = normalize_uint8_batch(b, torch.device("cpu"))
            feats.append(F.normalize(net(x).float(), dim=1).numpy())
    return np.concatenate(feats, axis=0)


def check_onnx(model: nn.Module, onnx_path: str | os.PathLike, image_paths: Sequence[str | os.PathLike],
               height: int, width: int, batch_size: int = 32) -> dict[str, Any]:
    """Run the ONNX file with onnxruntime on real images and compare with the fp32 torch features.

    Returns ``{"n_images", "min_cosine", "mean_cosine", "max_abs_diff", "batch_sizes_ok"}``. The torch
    reference goes through :func:`reid_core.features.normalize_uint8_batch` (the pipeline's own
    normalisation), so a graph that normalised twice, or not at all, would fail the comparison.
    """
    if not image_paths:
        raise ValueError("check_onnx: no images to check with")
    session = onnx_session(onnx_path)
    paths = [os.fspath(p) for p in image_paths]
    batches = [decode_batch(paths[s:s + batch_size], height, width) for s in range(0, len(paths), batch_size)]
    ref = _torch_fp32_features(model, batches)
    got = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: b.numpy()})[0] for b in batches], axis=0)
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    # the batch axis is dynamic: a batch of 1 and a batch of 3 give the same rows
    one = session.run([OUTPUT_NAME], {INPUT_NAME: batches[0][:1].numpy()})[0]
    three = session.run([OUTPUT_NAME], {INPUT_NAME: batches[0][:3].numpy()})[0]
    batch_ok = bool(np.allclose(one[0], got[0], atol=1e-4) and np.allclose(three, got[:len(three)], atol=1e-4))
    return {"n_images": len(paths), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(np.abs(ref - got).max()), "batch_sizes_ok": batch_ok}


def time_backends(model: nn.Module, onnx_paths: str | os.PathLike | Sequence[str | os.PathLike],
                  image_paths: Sequence[str | os.PathLike], height: int, width: int, batch_size: int = 64,
                  repeats: int = 5, threads: int | None = None, bf16: bool | str = "auto") -> list[dict[str, Any]]:
    """Images per second of the forward (normalisation + network, decoded uint8 batches in memory)
    for onnxruntime (each file of ``onnx_paths``) and torch (fp32, and torch's bf16 path where the
    CPU supports it), all with ``threads`` intra-op threads.

    After one warm-up pass each, the backends take turns: ``repeats`` rounds of one timed pass per
    backend, so a change in the machine's other load hits all of them alike; the best pass counts.
    """
    import contextlib

    import onnxruntime

    from .features import inference_runner

    threads = threads or torch.get_num_threads()
    if isinstance(onnx_paths, (str, os.PathLike)):
        onnx_paths = [onnx_paths]
    paths = [os.fspath(p) for p in image_paths]
    batches = [decode_batch(paths[s:s + batch_size], height, width) for s in range(0, len(paths), batch_size)]
    arrays = [b.numpy() for b in batches]
    n = sum(len(b) for b in batches)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with contextlib.ExitStack() as stack:
            runs: dict[str, Any] = {}
            for path in onnx_paths:
                session = onnx_session(path, threads=threads)
                runs[f"onnxruntime {onnxruntime.__version__} ({Path(path).name})"] = (
                    lambda s=session: [s.run([OUTPUT_NAME], {INPUT_NAME: a}) for a in arrays])
            for use_bf16 in [False] + ([True] if bf16 is not False else []):
                run = stack.enter_context(inference_runner(model, "cpu", bf16=use_bf16))
                if use_bf16 and not run.bf16:  # type: ignore[attr-defined]
                    continue
                runs[f"torch {torch.__version__} {'bf16' if use_bf16 else 'fp32'}"] = (
                    lambda r=run: [r(normalize_uint8_batch(b, r.device)) for b in batches])
            best = {name: float("inf") for name in runs}
            for fn in runs.values():
                fn()  # warm-up
            for _ in range(repeats):
                for name, fn in runs.items():
                    t0 = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return [{"backend": name, "images_per_s": n / seconds, "batch_size": batch_size, "threads": threads,
             "n_images": n, "height": height, "width": width} for name, seconds in best.items()]


def fp32_conv_nodes(model: nn.Module, onnx_path: str | os.PathLike) -> list[str]:
    """Names of the ONNX ``Conv`` nodes to keep in float when quantising: the convs that
    :func:`reid_core.models.inference.inference_copy` keeps in fp32 under bf16 (a following BN that
    amplifies rounding, or output stride <= 4). Matched to the graph by their (BN-folded) weights.

    Why: dynamic quantisation rounds each activation tensor to 8 bits with one scale per tensor. In
    the ImageNet MobileNetV2, block 2's expand conv has nearly constant output channels that BN
    scales up ~25x (see ``reid_core.models.inference``): quantising it, or the stem before it, alone
    drops the features to ~0.4-0.6 cosine of fp32 (measured on Market crops, 128 x 64).
    """
    import hashlib

    import onnx
    from onnx import numpy_helper

    from .models.inference import FP32Conv2d, inference_copy

    twin = inference_copy(model, bf16=True, fuse_bn=True).cpu()
    keep = {hashlib.sha256(m.weight.detach().float().contiguous().numpy().tobytes()).hexdigest()
            for m in twin.modules() if isinstance(m, FP32Conv2d)}
    graph = onnx.load(str(onnx_path)).graph
    weights = {init.name: init for init in graph.initializer}
    names = []
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights:
            w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
            if hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest() in keep:
                names.append(node.name)
    if len(names) != len(keep):
        raise RuntimeError(f"{onnx_path}: found {len(names)} of the {len(keep)} convs to keep in float")
    return names


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike, model: nn.Module | None = None) -> Path:
    """Dynamic int8 quantisation (weights int8 per channel, activations quantised at run time) with onnxruntime.

    Convolutions become ``ConvInteger`` and matrix products ``MatMulInteger``; the model is
    pre-processed (shape inference, graph optimisation) first, as onnxruntime recommends. Given
    ``model`` (the exported torch model), the convs of :func:`fp32_conv_nodes` stay in float.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        pre = tmp.with_suffix(".pre.onnx")
        try:
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
            exclude = fp32_conv_nodes(model, pre) if model is not None else []
            quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QUInt8, per_channel=True,
                             op_types_to_quantize=["Conv", "MatMul", "Gemm"], nodes_to_exclude=exclude)
        finally:
            if pre.exists():
                pre.unlink()
    return out_path
