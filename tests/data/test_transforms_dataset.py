import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from reid_core.data import (IMAGENET_MEAN, IMAGENET_STD, ImageDataset, TrainDataset, build_eval_transform,
                            build_train_transform, read_image)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        arr = rng.integers(0, 256, size=(40 + i, 20 + i, 3), dtype=np.uint8)
        p = tmp_path / f"im{i}.jpg"
        Image.fromarray(arr).save(p)
        paths.append(p)
    gray = tmp_path / "gray.png"
    Image.fromarray(rng.integers(0, 256, size=(30, 15), dtype=np.uint8), mode="L").save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 256, size=(30, 15, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    return paths + [gray, rgba]


def test_eval_transform_is_resize_totensor_normalise():
    img = Image.new("RGB", (10, 20), (255, 128, 0))
    x = build_eval_transform(32, 16)(img)
    assert x.shape == (3, 32, 16) and x.dtype == torch.float32
    expected = (torch.tensor([255, 128, 0]) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-3)
    assert torch.equal(x, build_eval_transform(32, 16)(img))  # deterministic


def test_train_transform_shape_and_randomness():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, size=(64, 32, 3), dtype=np.uint8))
    t = build_train_transform(64, 32)
    torch.manual_seed(0)
    outs = [t(img) for _ in range(20)]
    assert all(o.shape == (3, 64, 32) and o.dtype == torch.float32 for o in outs)
    assert len({o.sum().item() for o in outs}) > 10  # augmentations vary
    # random erasing fills with 0 (the mean colour after normalisation): some outputs have zero blocks
    assert any((o == 0).all(dim=0).sum() > 20 for o in outs)
    # padding + crop: border zeros of the padded image appear (value 0 before normalisation)
    pad_val = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(3, 1, 1)
    assert any(torch.isclose(o, pad_val.expand_as(o), atol=1e-4).all(dim=0).sum() > 30 for o in outs)
    torch.manual_seed(0)
    again = [t(img) for _ in range(20)]
    assert all(torch.equal(a, b) for a, b in zip(outs, again))  # reproducible under a seed
    plain = build_train_transform(64, 32, flip_p=0, pad=0, erase_p=0)
    assert torch.equal(plain(img), build_eval_transform(64, 32)(img))


def test_transform_bad_size():
    with pytest.raises(ValueError, match="height/width"):
        build_eval_transform(0, 64)
    with pytest.raises(ValueError, match="height/width"):
        build_train_transform(128, 6.5)


def test_image_dataset(images):
    ds = ImageDataset([str(p) for p in images], build_eval_transform(32, 16))
    assert len(ds) == 7
    x, i = ds[3]
    assert x.shape == (3, 32, 16) and i == 3
    for j in (5, 6):  # grayscale and RGBA become RGB
        assert ds[j][0].shape == (3, 32, 16)
    xs, idx = next(iter(DataLoader(ds, batch_size=4)))
    assert xs.shape == (4, 3, 32, 16) and idx.tolist() == [0, 1, 2, 3]
    raw, _ = ImageDataset(images)[0]  # no transform: float tensor in [0, 1], native size
    assert raw.shape == (3, 40, 20) and 0 <= raw.min() and raw.max() <= 1
    expected = torch.from_numpy(np.array(Image.open(images[0]).convert("RGB"))).permute(2, 0, 1) / 255.0
    assert torch.allclose(raw, expected)


def test_train_dataset(images):
    labels = np.array([3, 3, -1, 0, 1, 2, 2])
    ds = TrainDataset(images, labels, build_train_transform(32, 16))
    x, y, i = ds[2]
    assert x.shape == (3, 32, 16) and y == -1 and i == 2 and isinstance(y, int)
    assert TrainDataset(images, torch.tensor(labels), None)[0][1] == 3
    with pytest.raises(ValueError, match="one label per path"):
        TrainDataset(images, labels[:3], None)
    with pytest.raises(ValueError, match="integers"):
        TrainDataset(images, labels.astype(float), None)


def test_unreadable_and_missing_file_named(tmp_path, images):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(images[0].read_bytes()[:300])
    ds = ImageDataset([images[0], bad, tmp_path / "gone.jpg", truncated], build_eval_transform(32, 16))
    with pytest.raises(ValueError, match="broken.jpg.*unreadable"):
        ds[1]
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        ds[2]
    with pytest.raises(ValueError, match="truncated.jpg"):
        ds[3]
    with pytest.raises(ValueError, match="broken.jpg"):
        read_image(bad)
