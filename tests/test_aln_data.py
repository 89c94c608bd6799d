"""The ALN's host-side superpixels and training data (paper Sec. 2.2): SLIC ids, the on-disk cache, the shards of
the processes and the batches drawn from them."""

import os

import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from aln_jax import data, superpixels
from eval.datasets import embedded

SLIC = dict(n_segments=100, compactness=10.0, sigma=0.0, max_segments=256)


def _images(n: int, size: int = 64) -> np.ndarray:
    """Smooth random colour images (noise would give SLIC nothing to follow)."""
    noise = np.random.default_rng(0).random((n, size, size, 3))
    return (ndimage.gaussian_filter(noise, (0, 4, 4, 0)) * 2550 % 256).astype(np.uint8)


def _tiny(**overrides) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(dict(name="clutter_shapes", builder_config="tiny", data_dir="",
                                               manual_dir=""), **overrides))


def _slic_config(**overrides) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(dict(n_segments=30, compactness=10.0, sigma=0.0, max_segments=256),
                                          **overrides))


def _connected(segments: np.ndarray) -> bool:
    return all(ndimage.label(segments == k)[1] == 1 for k in range(segments.max() + 1))


def test_slic_ids_are_consecutive_uint8_and_deterministic():
    for image in _images(3):
        segments = superpixels.slic(image, **SLIC)
        assert segments.dtype == np.uint8 and segments.shape == (64, 64)
        np.testing.assert_array_equal(np.unique(segments), np.arange(segments.max() + 1))
        assert 20 < segments.max() + 1 <= 256 and _connected(segments)
        np.testing.assert_array_equal(segments, superpixels.slic(image, **SLIC))


def test_slic_merges_the_segments_beyond_the_cap():
    image = _images(1)[0]
    assert superpixels.slic(image, **SLIC).max() + 1 > 8
    capped = superpixels.slic(image, **dict(SLIC, max_segments=8))
    np.testing.assert_array_equal(np.unique(capped), np.arange(8))
    assert _connected(capped)
    with pytest.raises(ValueError, match="config.slic.max_segments"):
        superpixels.slic(image, **dict(SLIC, max_segments=300))


def test_slic_batch_with_workers_equals_in_process():
    images = _images(70)
    serial = superpixels.slic_batch(images, **SLIC, workers=0)
    assert serial.shape == (70, 64, 64) and serial.dtype == np.uint8
    np.testing.assert_array_equal(serial[3], superpixels.slic(images[3], **SLIC))
    np.testing.assert_array_equal(superpixels.slic_batch(images, **SLIC, workers=2), serial)


def _counting_slic(monkeypatch) -> list:
    calls, slic = [], superpixels.slic
    monkeypatch.setattr(superpixels, "slic", lambda *a, **k: calls.append(1) or slic(*a, **k))
    return calls


def test_load_train_data_builds_then_reads_the_cache(tmp_path, monkeypatch):
    calls = _counting_slic(monkeypatch)
    first = data.load_train_data(_tiny(), "train", 32, _slic_config(), str(tmp_path), progress=False)
    assert len(calls) == 64
    assert first.images.shape == (64, 32, 32, 3) and first.images.dtype == np.uint8
    assert first.labels.shape == (64,) and first.labels.dtype == np.int32
    assert first.segments.shape == (64, 32, 32) and first.segments.dtype == np.uint8
    examples, _ = embedded.load(_tiny(), "train")
    examples = list(examples)
    np.testing.assert_array_equal(first.images, np.stack([e["image"] for e in examples]))
    np.testing.assert_array_equal(first.labels, [e["label"] for e in examples])
    np.testing.assert_array_equal(first.segments[5], superpixels.slic(first.images[5], **_slic_config()))

    (cache,) = os.listdir(tmp_path)
    assert cache == "clutter_shapes-tiny-train-32px-slic30-c10-s0-m256-p0of1"
    monkeypatch.setattr(superpixels, "slic", lambda *a, **k: pytest.fail("recomputed a cached superpixel"))
    second = data.load_train_data(_tiny(), "train", 32, _slic_config(), str(tmp_path), progress=False)
    assert isinstance(second.segments, np.memmap)
    for k in ("images", "labels", "segments"):
        np.testing.assert_array_equal(getattr(second, k), getattr(first, k))


def test_half_written_cache_is_rebuilt(tmp_path, monkeypatch):
    expected = np.array(data.load_train_data(_tiny(), "validation", 32, _slic_config(), str(tmp_path),
                                             progress=False).segments)
    (cache,) = os.listdir(tmp_path)
    os.remove(tmp_path / cache / "complete.json")
    with open(tmp_path / cache / "segments.npy", "r+b") as f:
        f.truncate(100)
    calls = _counting_slic(monkeypatch)
    rebuilt = data.load_train_data(_tiny(), "validation", 32, _slic_config(), str(tmp_path), progress=False)
    assert len(calls) == 32 and os.listdir(tmp_path) == [cache]
    np.testing.assert_array_equal(rebuilt.segments, expected)


def test_process_shards_are_disjoint_and_cover_the_split(tmp_path):
    whole = data.load_train_data(_tiny(), "train", 32, _slic_config(), str(tmp_path), progress=False)
    shards = [data.load_train_data(_tiny(), "train", 32, _slic_config(workers=2), str(tmp_path), i, 2,
                                   progress=False) for i in range(2)]
    assert all(len(s.labels) > 0 for s in shards) and sum(len(s.labels) for s in shards) == 64
    for k in ("images", "labels", "segments"):
        np.testing.assert_array_equal(np.concatenate([getattr(s, k) for s in shards]), getattr(whole, k))
    assert sorted(os.listdir(tmp_path))[1:] == [f"clutter_shapes-tiny-train-32px-slic30-c10-s0-m256-p{i}of2"
                                                for i in range(2)]


def test_image_size_must_be_the_stored_size(tmp_path):
    with pytest.raises(ValueError, match=r"config\.aln\.image_size.*=32"):
        data.load_train_data(_tiny(), "train", 64, _slic_config(), str(tmp_path), progress=False)


def test_imagenet_without_the_manual_download_names_file_and_field(tmp_path):
    for manual_dir in ("", str(tmp_path)):
        config = ml_collections.ConfigDict(dict(name="imagenet2012", builder_config="", data_dir=str(tmp_path / "tfds"),
                                                manual_dir=manual_dir))
        with pytest.raises(FileNotFoundError, match=r"config\.data\.manual_dir: ILSVRC2012_img_train\.tar"):
            data.load_train_data(config, "train", 64, _slic_config(), str(tmp_path / "cache"), progress=False)


def test_batch_indices_are_epoch_permutations_fixed_by_the_step():
    n, b = 50, 8  # 6 batches per epoch, 2 rows left out
    epoch = [data.batch_indices(3, step, n, b, 1) for step in range(6)]
    assert all(e.dtype == np.int64 and e.shape == (b,) for e in epoch)
    rows = np.concatenate(epoch)
    assert len(set(rows)) == 48 and rows.min() >= 0 and rows.max() < n
    np.testing.assert_array_equal(data.batch_indices(3, 4, n, b, 1), epoch[4])
    next_epoch = np.concatenate([data.batch_indices(3, step, n, b, 1) for step in range(6, 12)])
    assert not np.array_equal(next_epoch, rows)
    assert not np.array_equal(data.batch_indices(3, 0, n, b, 0), epoch[0])
    assert not np.array_equal(data.batch_indices(4, 0, n, b, 1), epoch[0])
    with pytest.raises(ValueError, match="config.batch_size"):
        data.batch_indices(0, 0, 4, 8, 0)


def test_local_batch_keeps_the_order_asked():
    images = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    train = data.TrainData(images, np.arange(6, dtype=np.int32) * 10, images[..., 0].copy())
    batch = data.local_batch(train, np.array([4, 1, 4, 0]))
    np.testing.assert_array_equal(batch["labels"], [40, 10, 40, 0])
    np.testing.assert_array_equal(batch["images"], images[[4, 1, 4, 0]])
    np.testing.assert_array_equal(batch["segments"], images[[4, 1, 4, 0], ..., 0])
    assert batch["labels"].dtype == np.int32 and batch["images"].dtype == np.uint8
