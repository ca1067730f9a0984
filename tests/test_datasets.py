"""Dataset preparation: digits, CIFAR-10 (real on-disk format, restricted unpickling), image folders, verified loading.

Everything is offline: CIFAR-10 is a tiny archive written here in the real python-version layout."""

import hashlib
import io
import json
import os
import pickle
import shlex
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

import ddpm.datasets as datasets
import ddpm.store as store
from ddpm.datasets import DATASETS, load_digits, load_split, prepare_dataset

PER_BATCH = 4  # images per tiny CIFAR-10 batch
# Known pixels of the first training image: (channel, y, x) → value, placed in the flat 3072 row.
KNOWN_PIXELS = {(0, 5, 7): 201, (1, 2, 3): 102, (2, 31, 0): 53}


def _cifar_batch(index: int, rows: int) -> dict:
    """A batch dict exactly like the real files: bytes keys, uint8 (N, 3072) data, int list labels."""
    rng = np.random.default_rng(index)
    data = rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8)
    if index == 1:
        for (c, y, x), value in KNOWN_PIXELS.items():
            data[0, c * 1024 + y * 32 + x] = value
    return {
        b"batch_label": f"batch {index} of 6".encode(),
        b"labels": [(index * rows + j) % 10 for j in range(rows)],
        b"data": data,
        b"filenames": [f"img_{index}_{j}.png".encode() for j in range(rows)],
    }


def _dump(obj, path, legacy: bool) -> None:
    """pickle.dump; ``legacy`` rewrites numpy's global to the ``numpy.core`` name found in the real (numpy 1.x) files."""
    if not legacy:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
        return
    data = pickle.dumps(obj, protocol=3)  # GLOBAL opcodes are text, so the module name can be swapped
    data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    if any(isinstance(value, np.ndarray) for value in obj.values()):
        assert b"cnumpy.core.multiarray\n_reconstruct\n" in data
    path.write_bytes(data)


def write_tiny_cifar10(parent, legacy: bool = True):
    """``parent/cifar-10-batches-py`` with 5 data batches of PER_BATCH images, a test batch and batches.meta."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _dump(_cifar_batch(i, PER_BATCH), folder / f"data_batch_{i}", legacy)
    _dump(_cifar_batch(6, PER_BATCH), folder / "test_batch", legacy)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump({b"num_cases_per_batch": PER_BATCH, b"label_names": names, b"num_vis": 3072}, folder / "batches.meta", legacy)
    return folder


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# digits


def test_digits_prepare_writes_checksummed_files_and_a_fixed_split(tmp_path):
    from sklearn.datasets import load_digits as sklearn_digits

    manifest = prepare_dataset("digits", tmp_path)
    names = {"train_images.npy", "test_images.npy", "train_labels.npy", "test_labels.npy"}
    assert {p.name for p in tmp_path.iterdir()} == names | {"manifest.json"}  # no temporary files left
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert set(manifest["files"]) == names
    for name in names:
        assert manifest["files"][name]["sha256"] == _sha256(tmp_path / name)
    assert manifest["dataset"] == "digits" and manifest["source"] == "sklearn"
    assert manifest["image_shape"] == [1, 8, 8] and manifest["num_classes"] == 10
    assert manifest["counts"] == {"train": 1497, "test": 300}  # round(1797 / 6) = 300
    assert manifest["split"]["seed"] == 0 and manifest["split"]["method"] == "seeded_permutation"

    train_x, train_y = load_split(tmp_path, "train")
    test_x, test_y = load_split(tmp_path, "test")
    assert train_x.dtype == np.uint8 and train_x.shape == (1497, 1, 8, 8) and test_x.shape == (300, 1, 8, 8)
    assert train_y.dtype == np.int64 and test_y.dtype == np.int64

    # The recorded rule reproduces the test indices; splits are disjoint and cover all 1797 images.
    test_idx = np.array(manifest["split"]["test_indices"])
    assert np.array_equal(test_idx, np.sort(np.random.default_rng(0).permutation(1797)[:300]))
    train_idx = np.setdiff1d(np.arange(1797), test_idx)
    assert len(train_idx) + len(test_idx) == 1797 and not set(train_idx) & set(test_idx)
    everything, target = load_digits(), sklearn_digits().target
    assert np.array_equal(test_x, everything[test_idx]) and np.array_equal(train_x, everything[train_idx])
    assert np.array_equal(test_y, target[test_idx]) and np.array_equal(train_y, target[train_idx])


def test_a_manifest_without_chunk_checksums_is_refused_naming_the_file(tmp_path):
    """Data prepared before the chunk checksums (an earlier version) is prepared again, not read unchecked."""
    prepare_dataset("digits", tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for entry in manifest["files"].values():
        entry.pop("chunk_sha256", None)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="train_images.npy.*prepare the data set again"):
        datasets.open_split(tmp_path, "train").verify()


def test_digits_split_is_reproducible_and_depends_on_the_seed(tmp_path):
    a = prepare_dataset("digits", tmp_path / "a", seed=3)
    b = prepare_dataset("digits", tmp_path / "b", seed=3)
    c = prepare_dataset("digits", tmp_path / "c", seed=4)
    assert a["files"] == b["files"]  # byte-identical files
    for split in ("train", "test"):
        for x, y in zip(load_split(tmp_path / "a", split), load_split(tmp_path / "b", split)):
            assert np.array_equal(x, y)
    assert a["split"]["test_indices"] != c["split"]["test_indices"]


def test_digits_resize_and_test_fraction(tmp_path):
    manifest = prepare_dataset("digits", tmp_path, image_size=16, test_fraction=0.25)
    assert manifest["image_shape"] == [1, 16, 16]
    assert manifest["counts"] == {"train": 1797 - 449, "test": 449}  # round(449.25)
    # The workflow plans its bits/dim shards from this before any data is prepared.
    from ddpm.datasets import known_test_size

    assert known_test_size("digits", 0.25) == manifest["counts"]["test"]
    assert known_test_size("digits", 1 / 6) == 300 and known_test_size("imagefolder", 0.2) is None
    images, _ = load_split(tmp_path, "train")
    assert images.shape == (1348, 1, 16, 16) and images.dtype == np.uint8 and images.max() > 200


# --------------------------------------------------------------------------------------------
# cifar10


@pytest.mark.parametrize("give", ["folder", "parent"])
def test_cifar10_reads_the_real_layout_with_the_official_split(tmp_path, give):
    folder = write_tiny_cifar10(tmp_path / "raw")
    manifest = prepare_dataset("cifar10", tmp_path / "out", path=folder if give == "folder" else folder.parent)
    assert manifest["source"] == str(folder.resolve()) and manifest["downloaded"] is False
    assert manifest["counts"] == {"train": 5 * PER_BATCH, "test": PER_BATCH}
    assert manifest["image_shape"] == [3, 32, 32] and manifest["num_classes"] == 10
    assert manifest["class_names"][0] == "airplane" and manifest["split"]["method"] == "official"

    train_x, train_y = load_split(tmp_path / "out", "train")
    test_x, test_y = load_split(tmp_path / "out", "test")
    assert train_x.shape == (20, 3, 32, 32) and test_x.shape == (4, 3, 32, 32)
    for (c, y, x), value in KNOWN_PIXELS.items():  # row = R plane, G plane, B plane; each 32×32 row-major
        assert train_x[0, c, y, x] == value
    flat = np.concatenate([_cifar_batch(i, PER_BATCH)[b"data"] for i in range(1, 6)])
    assert np.array_equal(train_x[:, 1].reshape(20, 1024), flat[:, 1024:2048])
    assert train_y.tolist() == [(i * PER_BATCH + j) % 10 for i in range(1, 6) for j in range(PER_BATCH)]
    assert test_y.tolist() == _cifar_batch(6, PER_BATCH)[b"labels"]


def test_cifar10_resize(tmp_path):
    folder = write_tiny_cifar10(tmp_path / "raw")
    assert prepare_dataset("cifar10", tmp_path / "out", path=folder, image_size=16)["image_shape"] == [3, 16, 16]


def test_cifar10_refuses_a_malicious_pickle_without_running_it(tmp_path):
    folder = write_tiny_cifar10(tmp_path / "raw")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(pickle.UnpicklingError, match="data_batch_1") as caught:
        prepare_dataset("cifar10", tmp_path / "out", path=folder)
    assert isinstance(caught.value, ValueError)  # also a ValueError, like every other bad-file error
    assert "system" in str(caught.value)
    assert not marker.exists()
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cifar10_truncated_or_missing_batch_is_a_value_error_naming_it(tmp_path):
    folder = write_tiny_cifar10(tmp_path / "raw")
    data = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="data_batch_2"):
        prepare_dataset("cifar10", tmp_path / "out", path=folder)
    (folder / "data_batch_2").write_bytes(b"")
    with pytest.raises(ValueError, match="data_batch_2"):
        prepare_dataset("cifar10", tmp_path / "out", path=folder)
    (folder / "data_batch_2").unlink()
    with pytest.raises(ValueError, match="data_batch_2"):
        prepare_dataset("cifar10", tmp_path / "out", path=folder)


def test_cifar10_batch_with_wrong_contents_is_a_value_error_naming_it(tmp_path):
    folder = write_tiny_cifar10(tmp_path / "raw")
    _dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, folder / "test_batch", legacy=True)
    with pytest.raises(ValueError, match="test_batch"):
        prepare_dataset("cifar10", tmp_path / "out", path=folder)


def test_cifar10_without_path_or_download_explains_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="cifar-10-batches-py.*download=True"):
        prepare_dataset("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare_dataset("cifar10", tmp_path, path=tmp_path / "nowhere")


def test_cifar10_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10(torchvision.datasets.CIFAR10):
        """Stands in for torchvision's downloader: writes the tiny archive (modern pickle protocol) into root."""

        def __init__(self, root, train=True, download=False, **kwargs):
            calls.append({"root": root, "train": train, "download": download})
            if not (datasets.Path(root) / "cifar-10-batches-py").exists():
                write_tiny_cifar10(datasets.Path(root), legacy=False)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    manifest = prepare_dataset("cifar10", tmp_path / "out", download=True)
    assert calls and all(c["download"] for c in calls)
    assert all(datasets.Path(c["root"]) == tmp_path / "out" / "download" for c in calls)
    assert manifest["downloaded"] is True
    assert manifest["source"] == str((tmp_path / "out" / "download" / "cifar-10-batches-py").resolve())
    images, _ = load_split(tmp_path / "out", "train")
    assert images.shape == (20, 3, 32, 32)
    assert all(images[0, c, y, x] == v for (c, y, x), v in KNOWN_PIXELS.items())


class _Response(io.BytesIO):
    """What urllib.request.urlopen returns, as far as torchvision's downloader uses it."""

    def __init__(self, url, payload):
        super().__init__(payload)
        self.url, self.length = url, len(payload)


def _offline(request):
    raise urllib.error.URLError("no network in this test")


def test_cifar10_corrupt_archive_without_network_is_an_error_naming_it(tmp_path, monkeypatch):
    """torchvision itself runs; only the network is replaced."""
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    archive = tmp_path / "out" / "download" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"\x1f\x8b\x08 a truncated gzip")
    with pytest.raises(ValueError, match=f"CIFAR-10 archive {archive} is corrupt or incomplete"):
        prepare_dataset("cifar10", tmp_path / "out", download=True)
    assert archive.read_bytes() == b"\x1f\x8b\x08 a truncated gzip"  # the user's file is left as it was
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cifar10_truncated_download_is_an_error_naming_the_archive(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda request: _Response(request.full_url, b"\x1f\x8b\x08" * 100))
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz is corrupt or incomplete"):
        prepare_dataset("cifar10", tmp_path / "out", download=True)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cifar10_download_without_network_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(ValueError, match="cannot download CIFAR-10 into .*no network in this test.*dataset.path"):
        prepare_dataset("cifar10", tmp_path / "out", download=True)


# --------------------------------------------------------------------------------------------
# imagefolder


def _png(path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_imagefolder_resizes_crops_and_labels_by_subfolder(tmp_path):
    root = tmp_path / "images"
    for i, size in enumerate([(40, 24), (24, 40), (30, 30)]):
        _png(root / "cats" / f"c{i}.png", size, (255, 0, 0))
        _png(root / "dogs" / f"d{i}.png", size, (0, 0, 255))
    # Wide image: green outer edges, red centre (x 5..35 → 4..28 after scaling 20 → 16 high); the 16-wide
    # centre crop (x 8..24) keeps only red, while a plain resize to 16×16 would keep green.
    wide = Image.new("RGB", (40, 20), (0, 255, 0))
    wide.paste((255, 0, 0), (5, 0, 35, 20))
    wide.save(root / "cats" / "wide.png")
    _png(root / "dogs" / "grey.png", (20, 50), 128, mode="L")  # converted to RGB
    (root / "dogs" / "notes.txt").write_text("not an image")
    _png(root / "dogs" / ".hidden.png", (8, 8), (0, 0, 0))

    manifest = prepare_dataset("imagefolder", tmp_path / "out", path=root, image_size=16, test_fraction=0.25)
    assert manifest["class_names"] == ["cats", "dogs"] and manifest["num_classes"] == 2
    assert manifest["counts"] == {"train": 6, "test": 2} and manifest["image_shape"] == [3, 16, 16]
    assert manifest["source_files"] == 8
    images = np.concatenate([load_split(tmp_path / "out", s)[0] for s in ("train", "test")])
    labels = np.concatenate([load_split(tmp_path / "out", s)[1] for s in ("train", "test")])
    assert images.shape == (8, 3, 16, 16) and images.dtype == np.uint8
    assert sorted(labels.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    cats, dogs = images[labels == 0], images[labels == 1]
    assert (cats[:, 0] == 255).all() and (cats[:, 1] == 0).all()  # red only: wide.png's green edges cropped away
    assert ((dogs[:, 2] == 255) | (dogs[:, 2] == 128)).all()

    again = prepare_dataset("imagefolder", tmp_path / "again", path=root, image_size=16, test_fraction=0.25)
    assert again["files"] == manifest["files"]


def test_imagefolder_flat_folder_has_no_labels(tmp_path):
    for i in range(3):
        _png(tmp_path / "flat" / f"{i}.jpg", (10, 12), (i * 50, 0, 0))
    manifest = prepare_dataset("imagefolder", tmp_path / "out", path=tmp_path / "flat", image_size=8, test_fraction=0)
    assert manifest["num_classes"] == 0 and manifest["counts"] == {"train": 3, "test": 0}
    images, labels = load_split(tmp_path / "out", "train")
    assert labels.tolist() == [-1, -1, -1] and images.shape == (3, 3, 8, 8)
    assert load_split(tmp_path / "out", "test")[0].shape == (0, 3, 8, 8)


def test_imagefolder_errors_name_the_problem(tmp_path):
    root = tmp_path / "images"
    _png(root / "a" / "ok.png", (10, 10), (1, 2, 3))
    (root / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    with pytest.raises(ValueError, match="bad.png"):
        prepare_dataset("imagefolder", tmp_path / "out", path=root, image_size=8)
    with pytest.raises(FileNotFoundError, match="missing_folder"):
        prepare_dataset("imagefolder", tmp_path / "out", path=tmp_path / "missing_folder", image_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        prepare_dataset("imagefolder", tmp_path / "out", path=tmp_path / "empty", image_size=8)
    with pytest.raises(ValueError, match="image_size"):
        prepare_dataset("imagefolder", tmp_path / "out", path=root)
    assert not (tmp_path / "out" / "manifest.json").exists()


# --------------------------------------------------------------------------------------------
# load_split, names, atomic output


def test_load_split_detects_tampering_and_a_missing_manifest(tmp_path):
    prepare_dataset("digits", tmp_path)
    path = tmp_path / "test_images.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch.*test_images.npy.*re-run prepare"):
        load_split(tmp_path, "test")
    load_split(tmp_path, "train")  # the untouched split still loads
    with pytest.raises(ValueError, match="valid splits: train, test"):
        load_split(tmp_path, "validation")
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_split(tmp_path, "train")


def test_unknown_dataset_lists_the_valid_ones(tmp_path):
    assert DATASETS == ("digits", "cifar10", "imagefolder")
    with pytest.raises(ValueError, match="'mnist'.*digits, cifar10, imagefolder"):
        prepare_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="digits, cifar10, imagefolder"):
        datasets.load_dataset("mnist")


def test_a_crash_while_writing_leaves_no_manifest_or_temporary_files(tmp_path, monkeypatch):
    prepare_dataset("digits", tmp_path)
    real_save, calls = datasets.save_npy, []

    def failing_save(path, array):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(path, array)

    monkeypatch.setattr(datasets, "save_npy", failing_save)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset("digits", tmp_path, seed=1)
    assert not (tmp_path / "manifest.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(FileNotFoundError):
        load_split(tmp_path, "train")


def test_atomic_write_removes_its_temporary_file_when_replace_fails(tmp_path, monkeypatch):
    target = tmp_path / "x.npy"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("replace failed")

    monkeypatch.setattr(store.os, "replace", broken_replace)
    with pytest.raises(OSError, match="replace failed"):
        store.atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.npy"]
