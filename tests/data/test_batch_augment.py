"""The batched uint8 augmentation against torchvision's ops applied image by image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from reid_core.data.batch_augment import BatchAugment, ImageStore, image_store
from reid_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def _reference(img: np.ndarray, p, b: int, pad: int) -> torch.Tensor:
    """The torchvision recipe (flip, pad, crop, to tensor, normalise, erase) with batch b's parameters."""
    h, w = img.shape[:2]
    pil = Image.fromarray(img)
    if bool(p.flip[b]):
        pil = TF.hflip(pil)
    pil = TF.pad(pil, pad)
    pil = TF.crop(pil, int(p.top[b]), int(p.left[b]), h, w)
    x = TF.normalize(TF.to_tensor(pil), IMAGENET_MEAN, IMAGENET_STD)
    if bool(p.erase[b]):
        x = TF.erase(x, int(p.ei[b]), int(p.ej[b]), int(p.eh[b]), int(p.ew[b]), torch.tensor(0.0))
    return x


@pytest.mark.parametrize("size", [(32, 16), (20, 24)])
def test_apply_matches_torchvision_per_image(size):
    h, w = size
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (24, h, w, 3), dtype=np.uint8)
    aug = BatchAugment(h, w, pad=5)
    params = aug.sample(len(imgs), torch.Generator().manual_seed(3))
    assert params.flip.any() and (~params.flip).any() and params.erase.any() and (~params.erase).any()
    out = aug.apply(torch.from_numpy(imgs), params)
    assert out.shape == (len(imgs), 3, h, w) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = torch.stack([_reference(imgs[b], params, b, 5) for b in range(len(imgs))])
    assert torch.equal(out, ref)  # same float ops in the same order


def test_sample_ranges_rates_and_seed():
    aug = BatchAugment(64, 32)
    p = aug.sample(4000, torch.Generator().manual_seed(0))
    assert 0.45 < p.flip.float().mean() < 0.55
    assert 0.40 < p.erase.float().mean() < 0.55  # p 0.5 times "a rectangle fitted within 10 tries"
    assert p.top.min() == 0 and p.top.max() == 20 and p.left.min() == 0 and p.left.max() == 20
    e = p.erase
    assert (p.eh[e] >= 1).all() and (p.eh[e] < 64).all() and (p.ew[e] < 32).all()
    assert (p.ei[e] + p.eh[e] <= 64).all() and (p.ej[e] + p.ew[e] <= 32).all()
    frac = (p.eh[e] * p.ew[e]).double() / (64 * 32)
    assert frac.min() > 0.01 and frac.max() < 0.45
    q = aug.sample(4000, torch.Generator().manual_seed(0))
    assert all(torch.equal(getattr(p, f), getattr(q, f)) for f in ("flip", "top", "left", "erase", "ei", "ej"))
    r = aug.sample(4000, torch.Generator().manual_seed(1))
    assert not torch.equal(p.top, r.top)


def test_no_augmentation_is_plain_normalisation():
    imgs = torch.randint(0, 256, (3, 8, 4, 3), dtype=torch.uint8)
    out = BatchAugment(8, 4, flip_p=0, pad=0, erase_p=0)(imgs, torch.Generator().manual_seed(0))
    ref = torch.stack([TF.normalize(TF.to_tensor(Image.fromarray(i.numpy())), IMAGENET_MEAN, IMAGENET_STD)
                       for i in imgs])
    assert torch.equal(out, ref)  # same float ops in the same order


def test_bad_input():
    aug = BatchAugment(8, 4)
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 8, 4, 3))
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 4, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="flip_p"):
        BatchAugment(8, 4, flip_p=2)
    with pytest.raises(ValueError, match="pad"):
        BatchAugment(8, 4, pad=-1)


def test_store_decodes_once_and_names_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 10, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    store = ImageStore(paths, 16, 8)
    x = store.batch([2, 0, 2])
    assert x.shape == (3, 16, 8, 3) and x.dtype == torch.uint8
    assert store.loaded.tolist() == [True, False, True]
    expect = np.asarray(Image.open(paths[2]).convert("RGB").resize((8, 16), Image.BICUBIC))
    assert np.array_equal(x[0].numpy(), expect) and np.array_equal(x[2].numpy(), expect)
    assert image_store(paths, 16, 8) is image_store(paths, 16, 8)
    assert image_store(paths, 16, 8) is not image_store(paths, 8, 4)
    with pytest.raises(IndexError):
        store.batch([3])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        ImageStore([str(tmp_path / "bad.png")], 16, 8).batch([0])
