"""``reid export --format onnx``: parity with torch on real (synthetic) images, the preprocessing
contract (normalised once, inside the graph), the dynamic batch axis, int8 quantisation, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from reid_core.export import check_onnx, export_onnx, onnx_features, onnx_session, quantize_int8  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tools_run, tmp_path_factory):
    from reid_core.models import model_from_checkpoint

    model = model_from_checkpoint(tools_run / "round_001" / "checkpoint.pt", "cpu")
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", 64, 32, checkpoint="checkpoint.pt")
    return model, path


def _paths(root, n=24):
    return sorted(str(p) for p in (root / "bounding_box_test").glob("*.jpg"))[:n]


def test_onnx_matches_torch_with_the_pipelines_normalisation(exported, tools_market):
    model, path = exported
    res = check_onnx(model, path, _paths(tools_market), 64, 32, batch_size=10)
    assert res["n_images"] == 24
    assert res["min_cosine"] >= 0.9999, res
    assert res["batch_sizes_ok"]


def test_graph_normalises_exactly_once(exported, tools_market):
    """Reference built without any project code: PIL resize + torchvision ToTensor/Normalize + the
    unfused model. The graph gets the raw resized pixels; were it to skip normalisation or apply it a
    second time, the features would differ."""
    import torchvision.transforms as T
    from PIL import Image

    model, path = exported
    tf = T.Compose([T.Resize((64, 32), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    paths = _paths(tools_market, 6)
    with torch.no_grad():
        ref = torch.cat([model.eval()(tf(Image.open(p).convert("RGB")).unsqueeze(0)) for p in paths]).numpy()
    got = onnx_features(onnx_session(path), paths, 64, 32)
    cos = np.sum(ref * got, axis=1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= 0.9999
    # the counterfactual the contract forbids: normalising before the graph too changes the features
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 64), Image.BICUBIC)) for p in paths])
    twice = ((pixels / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225])
    twice = np.clip(np.round(twice * 40 + 128), 0, 255).astype(np.uint8)  # the kind of "already normalised" input
    wrong = onnx_session(path).run(["features"], {"images": twice})[0]
    assert (np.sum(ref * wrong, axis=1) / np.linalg.norm(ref, axis=1)).min() < 0.999


def test_batch_axis_is_dynamic_and_metadata_documents_the_input(exported, tools_market):
    import onnx

    _, path = exported
    sess = onnx_session(path)
    inp = sess.get_inputs()[0]
    assert inp.name == "images" and inp.type == "tensor(uint8)" and list(inp.shape[1:]) == [64, 32, 3]
    assert not isinstance(inp.shape[0], int)  # symbolic batch dimension
    x = np.random.default_rng(0).integers(0, 256, size=(5, 64, 32, 3), dtype=np.uint8)
    five = sess.run(["features"], {"images": x})[0]
    one = sess.run(["features"], {"images": x[2:3]})[0]
    assert five.shape == (5, 1280) and np.allclose(one[0], five[2], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(five, axis=1), 1.0, atol=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert "inside the graph" in meta["reid.preprocessing"] and meta["reid.backbone"] == "mobilenet_v2"
    assert json.loads(meta["reid.mean"]) == [0.485, 0.456, 0.406]


def test_int8_model_runs_and_stays_close(exported, tools_market, tmp_path):
    """Dynamic int8 with the BN-amplified early convs kept in float stays close to fp32; quantising
    every conv (the naive call) does not - the reason for ``fp32_conv_nodes``."""
    model, path = exported
    q = quantize_int8(path, tmp_path / "model.int8.onnx", model=model)
    naive = quantize_int8(path, tmp_path / "naive.int8.onnx")
    assert q.stat().st_size < 0.5 * path.stat().st_size
    paths = _paths(tools_market, 12)
    a = onnx_features(onnx_session(path), paths, 64, 32)
    b = onnx_features(onnx_session(q), paths, 64, 32)
    c = onnx_features(onnx_session(naive), paths, 64, 32)
    cos, cos_naive = np.sum(a * b, axis=1), np.sum(a * c, axis=1)
    assert b.shape == a.shape and cos.min() > 0.98, cos.min()
    assert cos_naive.mean() < cos.mean() - 0.05, (cos_naive.mean(), cos.mean())


def test_cli_export_check_int8_benchmark(tools_run, tools_market, tmp_path, capsys):
    from reid_core.cli import main

    out = tmp_path / "m.onnx"
    rc = main(["export", "--format", "onnx", "--checkpoint", str(tools_run), "--out", str(out),
               "--check-images", str(tools_market / "bounding_box_test"), "--check-count", "16", "--int8",
               "--eval-data", str(tools_market), "--benchmark", "--benchmark-images", "32", "--batch-size", "16",
               "--threads", "1"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["check"]["min_cosine"] >= 0.9999 and report["check"]["n_images"] == 16
    assert json.loads(out.with_suffix(".json").read_text())["check"] == report["check"]
    assert out.with_name("m.int8.onnx").is_file()
    assert 0 <= report["mAP_fp32_onnx"]["mAP"] <= 1 and "mAP_change_points" in report["int8"]
    backends = [r["backend"].split()[0] for r in report["speed"]["rows"]]
    assert backends.count("onnxruntime") == 2 and "torch" in backends
    assert all(r["images_per_s"] > 0 for r in report["speed"]["rows"])
