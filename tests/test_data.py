import logging
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from eva8_utils import data as D
from eva8_utils.augment import AugmentConfig
from eva8_utils.errors import DataError


# --------------------------------------------------------------------------- shapes
def test_shapes_same_seed_same_bytes_and_test_split_independent_of_train_size():
    a = D.make_shapes(100, 50, seed=3)
    b = D.make_shapes(100, 50, seed=3)
    c = D.make_shapes(300, 50, seed=3)
    d = D.make_shapes(100, 50, seed=4)
    assert a.x_train.dtype == np.uint8 and a.x_train.shape == (100, 32, 32, 3)
    assert a.y_train.dtype == np.int64
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.x_test, b.x_test)
    assert np.array_equal(a.x_test, c.x_test)
    assert not np.array_equal(a.x_train, d.x_train)
    assert len(a.classes) == 10 and set(np.unique(c.y_train)) == set(range(10))


def test_shapes_boxes_hold_the_object():
    s = D.make_shapes(10, 300, seed=0)
    b = s.boxes_test
    assert b.shape == (300, 4)
    assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
    assert b.min() >= 0 and b.max() <= 31
    # Filled shapes (circle, square, diamond) are flat at the box centre; the background is noisy.
    checked = 0
    for i in np.flatnonzero(np.isin(s.y_test, [0, 1, 5])):
        y0, x0, y1, x1 = b[i]
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        centre = s.x_test[i, cy - 1:cy + 2, cx - 1:cx + 2].astype(float)
        outside = np.ones((32, 32), bool)
        outside[max(y0 - 1, 0):y1 + 2, max(x0 - 1, 0):x1 + 2] = False
        assert centre.std(axis=(0, 1)).max() < 12
        assert s.x_test[i][outside].astype(float).std(axis=0).max() > 15
        checked += 1
    assert checked > 50
    area = ((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)) / 1024
    assert 0.03 < area.mean() < 0.3


# --------------------------------------------------------------------------- stats
def test_channel_stats_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
    mean, std = D.channel_stats(x, chunk=64)
    f = x.astype(np.float64) / 255
    assert np.allclose(mean, f.mean(axis=(0, 1, 2)), atol=1e-10)
    assert np.allclose(std, f.std(axis=(0, 1, 2)), atol=1e-10)
    counts = D.class_counts(np.array([0, 2, 2, 5]), 6)
    assert counts.tolist() == [1, 0, 2, 0, 0, 1]


def test_splits_compute_mean_std_from_the_train_split():
    s = D.make_shapes(64, 16, seed=1)
    m, sd = D.channel_stats(s.x_train)
    assert s.mean == m and s.std == sd


# --------------------------------------------------------------------------- loader
def _loader(n=103, bs=10, train=True, aug=None, rank=0, world=1, seed=0):
    x = np.zeros((n, 4, 4, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    x[:, 0, 0, 1] = np.arange(n) // 256
    return D.DeviceLoader(x, np.arange(n) % 7, batch_size=bs, mean=(0, 0, 0), std=(1, 1, 1), train=train,
                          aug=aug, seed=seed, shard=(rank, world))


def _ids(batch_x):
    return (batch_x[:, 0, 0, 0] * 255 + batch_x[:, 1, 0, 0] * 255 * 256).round().long()


def test_train_loader_yields_every_index_once_per_epoch_in_a_fresh_order():
    loader = _loader()
    orders = []
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        ids = torch.cat([_ids(x) for x, _ in loader])
        assert sorted(ids.tolist()) == list(range(103))
        orders.append(ids)
    assert not torch.equal(orders[0], orders[1])
    loader.set_epoch(1)
    assert torch.equal(torch.cat([_ids(x) for x, _ in loader]), orders[0])  # same seed+epoch, same order


def test_train_loader_merges_a_last_batch_of_one():
    sizes = [len(y) for _, y in _loader(n=21, bs=10)]
    assert sizes == [10, 11]


def test_test_loader_keeps_order_and_the_last_partial_batch():
    loader = _loader(train=False)
    batches = [(x, y) for x, y in loader]
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    assert torch.equal(torch.cat([_ids(x) for x, _ in batches]), torch.arange(103))


def test_ranks_split_each_global_batch_and_shard_the_test_split_exactly_once():
    for train in (True, False):
        parts = []
        for r in range(3):
            ld = _loader(n=103, bs=8, train=train, rank=r, world=3)
            ld.set_epoch(1)
            parts.append([_ids(x) for x, _ in ld])
        flat = torch.cat([torch.cat(p) for p in parts])
        assert sorted(flat.tolist()) == list(range(103))
        if train:  # same number of steps on every rank
            assert len({len(p) for p in parts}) == 1
            # rank parts of step k together equal the global batch of a single process with batch 24
            single = _loader(n=103, bs=24, train=True)
            single.set_epoch(1)
            for k, (x, _) in enumerate(single):
                assert torch.equal(torch.cat([parts[r][k] for r in range(3)]), _ids(x))


def test_same_seed_same_augmented_batches():
    s = D.make_shapes(64, 8, seed=0)
    aug = AugmentConfig()

    def batches(seed):
        ld = D.DeviceLoader(s.x_train, s.y_train, batch_size=16, mean=s.mean, std=s.std, train=True, aug=aug,
                            seed=seed)
        ld.set_epoch(2)
        return [x for x, _ in ld]

    a, b, c = batches(1), batches(1), batches(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_loader_normalises_with_the_given_mean_and_std():
    x = np.full((2, 2, 2, 3), 255, np.uint8)
    ld = D.DeviceLoader(x, [0, 1], batch_size=2, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    xb, _ = next(iter(ld))
    assert torch.allclose(xb[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


# --------------------------------------------------------------------------- folder
def _save(path, size=(8, 8), mode="RGB", color=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else (color[0] if mode == "L" else color + (255,))).save(path)


def make_folder(root, classes=("cat", "dog"), per_class=3, test_dir="test", size=(8, 8)):
    for split, n in (("train", per_class), (test_dir, 2)):
        for ci, c in enumerate(classes):
            for i in range(n):
                _save(root / split / c / f"{i}.png", size, color=(ci * 100, i * 10, 5))
    return root


def test_folder_dataset_loads_labels_and_sizes(tmp_path):
    root = make_folder(tmp_path / "ds")
    s = D.load_folder(root, cache_dir="off")
    assert s.classes == ["cat", "dog"]
    assert s.x_train.shape == (6, 8, 8, 3) and s.x_test.shape == (4, 8, 8, 3)
    assert s.y_train.tolist() == [0, 0, 0, 1, 1, 1] and s.y_test.tolist() == [0, 0, 1, 1]
    assert s.x_train[3, 0, 0].tolist() == [100, 0, 5]


def test_folder_accepts_val_and_converts_gray_and_rgba(tmp_path):
    root = make_folder(tmp_path / "ds", test_dir="val")
    _save(root / "train" / "cat" / "g.png", mode="L", color=(77, 0, 0))
    _save(root / "train" / "cat" / "a.png", mode="RGBA", color=(1, 2, 3))
    s = D.load_folder(root, cache_dir="off")
    assert s.x_train.shape == (8, 8, 8, 3) and len(s.y_test) == 4
    # files sort as 0.png 1.png 2.png a.png g.png within cat/
    assert s.x_train[3, 0, 0].tolist() == [1, 2, 3]
    assert s.x_train[4, 0, 0].tolist() == [77, 77, 77]


def test_folder_mixed_sizes_need_image_size(tmp_path):
    root = make_folder(tmp_path / "ds")
    _save(root / "train" / "dog" / "big.png", size=(16, 16))
    with pytest.raises(DataError) as e:
        D.load_folder(root, cache_dir="off")
    msg = str(e.value)
    assert "different sizes" in msg and "big.png" in msg and "--image-size" in msg
    s = D.load_folder(root, image_size=12, cache_dir="off")
    assert s.x_train.shape[1:] == (12, 12, 3) and s.x_test.shape[1:] == (12, 12, 3)


def test_folder_corrupt_image_is_named(tmp_path):
    root = make_folder(tmp_path / "ds")
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError) as e:
        D.load_folder(root, cache_dir="off")
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_folder_skips_non_image_files_with_a_count(tmp_path, caplog):
    root = make_folder(tmp_path / "ds")
    (root / "train" / "cat" / "notes.txt").write_text("hello")
    (root / "test" / "dog" / "labels.csv").write_text("a,b")
    with caplog.at_level(logging.WARNING, logger="eva8_utils"):
        s = D.load_folder(root, cache_dir="off")
    assert s.skipped_files == 2 and len(s.y_train) == 6
    assert "skipped 2 non-image file(s)" in caplog.text


@pytest.mark.parametrize("case,needle", [
    ("missing", "does not exist"),
    ("no_train", "has no train/ folder"),
    ("no_test", "has no labelled test split"),
    ("empty_class", "holds no images"),
    ("extra_test_class", "class folder that train/ does not have"),
])
def test_folder_layout_errors(tmp_path, case, needle):
    root = tmp_path / "ds"
    if case != "missing":
        make_folder(root)
    if case == "no_train":
        import shutil

        shutil.rmtree(root / "train")
    elif case == "no_test":
        import shutil

        shutil.rmtree(root / "test")
    elif case == "empty_class":
        (root / "train" / "bird").mkdir()
    elif case == "extra_test_class":
        _save(root / "test" / "bird" / "0.png")
    with pytest.raises(DataError, match=needle):
        D.load_folder(root, cache_dir="off")


def test_folder_cache_is_reused_and_invalidated_by_changes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "ds")
    cache = tmp_path / "cache"
    first = D.load_folder(root, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(D, "decode_image", no_decode)
    second = D.load_folder(root, cache_dir=cache)
    assert np.array_equal(first.x_train, second.x_train) and np.array_equal(first.y_test, second.y_test)
    monkeypatch.undo()
    _save(root / "train" / "dog" / "new.png")
    third = D.load_folder(root, cache_dir=cache)
    assert len(third.y_train) == 7 and len(list(cache.glob("*.npz"))) == 2


def test_tinyimagenet_layout_is_read_in_place(tmp_path):
    root = tmp_path / "tiny"
    wnids = ["n01", "n02", "n03"]
    for ci, w in enumerate(wnids):
        for i in range(2):
            _save(root / "train" / w / "images" / f"{w}_{i}.JPEG", size=(64, 64), color=(ci * 50, 0, 0))
    ann = []
    for i, w in enumerate(["n03", "n01", "n02", "n03"]):
        _save(root / "val" / "images" / f"val_{i}.JPEG", size=(64, 64), color=(wnids.index(w) * 50, 0, 0))
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    (root / "test" / "images").mkdir(parents=True)  # unlabelled, as in TinyImageNet
    _save(root / "test" / "images" / "test_0.JPEG", size=(64, 64))
    s = D.load_folder(root, cache_dir="off")
    assert s.classes == wnids
    assert s.x_train.shape == (6, 64, 64, 3)
    assert s.y_test.tolist() == [2, 0, 1, 2]
    # labels match the pixel colour we wrote for each class
    assert [int(v) for v in s.x_test[:, 0, 0, 0] // 50] == [2, 0, 1, 2]
    assert not (root / "val" / "n01").exists()  # nothing moved


def test_offline_cifar10_is_one_clear_line(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as e:
        D.load_cifar10(tmp_path / "data")
    msg = str(e.value)
    assert "\n" not in msg
    assert "could not get CIFAR-10" in msg and "--dataset folder" in msg and "--dataset shapes" in msg
    assert not (tmp_path / "data").exists()  # no empty ./data left behind
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")

    def half_download(url, download_root, *a, **k):
        (mine / "cifar-10-python.tar.gz").write_bytes(b"partial")
        offline()

    monkeypatch.setattr(cifar, "download_and_extract_archive", half_download)
    with pytest.raises(DataError):
        D.load_cifar10(mine)
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]  # an existing folder keeps only what it had


def test_progressive_resizing_shrinks_only_the_early_epochs():
    s = D.make_shapes(64, 8, seed=0)
    aug = AugmentConfig(low_res_size=20, low_res_epochs=2, cutmix=1.0, mix_classes=10)
    ld = D.DeviceLoader(s.x_train, s.y_train, batch_size=16, mean=s.mean, std=s.std, train=True, aug=aug)
    sizes = {}
    for epoch in (1, 2, 3):
        ld.set_epoch(epoch)
        sizes[epoch] = {tuple(x.shape[-2:]) for x, _ in ld}
    assert sizes == {1: {(20, 20)}, 2: {(20, 20)}, 3: {(32, 32)}}
    assert ld.batch_at([0])[0].shape[-1] == 32  # analysis and tests see the images as they are


def test_progressive_resizing_by_crop_takes_seeded_windows_that_cover_each_axis():
    # Non-square images, so that swapped y/x offsets cannot pass; no other augmentation,
    # so each training image must be an exact 16x16 window of its normalised image.
    g = torch.Generator().manual_seed(0)
    x_u8 = torch.randint(0, 256, (400, 24, 40, 3), dtype=torch.uint8, generator=g)
    y = torch.arange(400) % 10
    aug = AugmentConfig(crop_padding=0, flip="none", cutout=0, low_res_size=16, low_res_epochs=2, low_res_mode="crop")
    ld = D.DeviceLoader(x_u8, y, batch_size=400, mean=(0.5,) * 3, std=(0.25,) * 3, train=True, aug=aug,
                        seed=3)
    ld.set_epoch(1)
    perm, params = ld.epoch_order()
    (xb, yb), = list(ld)
    assert xb.shape == (400, 3, 16, 16) and torch.equal(yb, y[perm])
    full, _ = ld.batch_at(perm)
    oy, ox = params["win_y"], params["win_x"]
    for b in (0, 1, 17, 399):
        want = full[b, :, oy[b]:oy[b] + 16, ox[b]:ox[b] + 16]
        assert torch.allclose(xb[b], want, atol=1e-6), b
    # offsets: rows in [0, 24-16], columns in [0, 40-16], every value drawn
    assert set(oy.tolist()) == set(range(9)) and set(ox.tolist()) == set(range(25))
    assert (list(ld)[0][0] == xb).all()  # the same epoch gives the same windows (exact resume)
    ld.set_epoch(2)
    assert not torch.equal(ld.epoch_order()[1]["win_y"], oy)  # new windows every epoch
    ld.set_epoch(3)
    assert "win_y" not in ld.epoch_order()[1] and list(ld)[0][0].shape[-2:] == (24, 40)


def test_progressive_resizing_by_crop_refuses_a_window_larger_than_the_images():
    s = D.make_shapes(20, 4, seed=0)
    aug = AugmentConfig(low_res_size=40, low_res_epochs=1, low_res_mode="crop")
    with pytest.raises(DataError, match="--low-res-size 40 is larger than the 32x32 training images"):
        D.DeviceLoader(s.x_train, s.y_train, batch_size=4, mean=s.mean, std=s.std, train=True, aug=aug)
    resize = AugmentConfig(low_res_size=40, low_res_epochs=1)  # resize mode may also enlarge
    D.DeviceLoader(s.x_train, s.y_train, batch_size=4, mean=s.mean, std=s.std, train=True, aug=resize)


def test_the_airbench_files_hold_the_folder_loaders_pixels_labels_and_classes(tmp_path):
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("airbench_data", ROOT / "benchmarks" / "airbench_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    root = make_folder(tmp_path / "ds", classes=("cat", "dog", "emu"), per_class=2)
    assert mod.main([str(root), str(tmp_path / "ab"), "--cache-dir", "off"]) == 0
    splits = D.load_folder(root, cache_dir=None)
    for name, x, y in (("train", splits.x_train, splits.y_train), ("test", splits.x_test, splits.y_test)):
        d = torch.load(tmp_path / "ab" / f"{name}.pt", weights_only=True)  # what airbench's CifarLoader reads
        assert d["images"].dtype == torch.uint8 and d["images"].shape == x.shape and x.shape[-1] == 3  # NHWC
        assert np.array_equal(d["images"].numpy(), x) and d["labels"].dtype == torch.int64
        assert d["labels"].tolist() == y.tolist() and d["classes"] == ["cat", "dog", "emu"]
    assert mod.main([str(tmp_path / "missing"), str(tmp_path / "ab2")]) == 2 and not (tmp_path / "ab2").exists()
