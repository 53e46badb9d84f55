import gzip

import numpy as np
import pytest
from PIL import Image

from velcro.sw import data
from velcro.sw.data import DataError, Dataset, Task, load_fashion_mnist, make_task, read_idx


def write_idx(path, array, code=0x08, magic=None):
    header = bytes([0, 0, code, array.ndim]) if magic is None else magic
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_read_idx_roundtrip(tmp_path, rng):
    array = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz", 3), array)


def test_read_idx_big_endian_int32(tmp_path):
    array = np.array([1, -2, 70000], dtype=">i4")
    write_idx(tmp_path / "x.gz", array, code=0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz", 1), [1, -2, 70000])


def test_read_idx_rejects_bad_magic(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros(3, np.uint8), magic=b"\x12\x34\x08\x01")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "x.gz", 1)


def test_read_idx_rejects_size_mismatch(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(7))
    with pytest.raises(DataError, match="declares shape \\[10\\]"):
        read_idx(path, 1)


def test_read_idx_rejects_wrong_rank(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match="2 dimensions, expected 3"):
        read_idx(tmp_path / "x.gz", 3)


def test_idx_images_read_ranges_in_batches(tmp_path, rng):
    array = rng.integers(0, 256, (23, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / "x.gz", array)
    source = data.IdxImages.open(tmp_path / "x.gz")
    assert len(source) == 23 and source.shape == (1, 4, 3)
    np.testing.assert_array_equal(source.read(5, 9), array[5:9, None])
    batches = list(data.iter_batches(source, 3, 23, 8))
    assert [len(b) for b in batches] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate(batches), array[3:, None])
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (9, 4, 3))
                + array[:2].tobytes())
    with pytest.raises(DataError, match="truncated at image 0"):
        data.IdxImages.open(tmp_path / "short.gz").read(0, 5)
    write_idx(tmp_path / "labels.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="not a 3-dimensional uint8 IDX file"):
        data.IdxImages.open(tmp_path / "labels.gz")


def test_a_folder_index_reads_what_load_folder_loads(tmp_path, rng):
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(
                tmp_path / name / f"{i}.png")
    index = data.FolderIndex.scan(tmp_path, channels=3, size=(4, 6))
    loaded = data.load_folder(tmp_path, channels=3, size=(4, 6))
    assert index.classes == loaded.classes == ("a", "b") and len(index) == 6
    assert all(path.is_absolute() for path in index.files)
    np.testing.assert_array_equal(np.concatenate(list(data.iter_batches(index, 0, 6, 4))),
                                  loaded.images)
    np.testing.assert_array_equal(index.labels, loaded.labels)
    assert index.read(2, 2).shape == (0, 3, 4, 6)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", root=tmp_path)


def test_fashion_mnist_test_split():
    ds = load_fashion_mnist("test")
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels).tolist() == [1000] * 10


def test_the_held_out_training_images_are_a_fixed_sixth_apart_from_fit():
    train, fit, held = (load_fashion_mnist(s) for s in ("train", "fit", "heldout"))
    assert len(fit) == 50_000 and len(held) == 10_000
    index = data.heldout_index(60_000)
    np.testing.assert_array_equal(index, data.heldout_index(60_000))
    np.testing.assert_array_equal(held.images, train.images[index])
    rest = np.setdiff1d(np.arange(60_000), index)
    np.testing.assert_array_equal(fit.labels, train.labels[rest])
    # Every class is represented in the held-out pool in about its share.
    assert np.bincount(held.labels, minlength=10).min() > 900
    with pytest.raises(DataError, match="train, fit, heldout or test"):
        load_fashion_mnist("validation")


def test_named_tasks_select_their_classes():
    footwear = make_task("footwear")
    assert set(np.unique(footwear.data.labels)) == {5, 7, 9}
    held = load_fashion_mnist("heldout")
    assert len(footwear.data) == 3000 + int(np.isin(held.labels, (5, 7, 9)).sum())
    assert len(make_task("bags").data) == 1000 + int((held.labels == 8).sum())


def test_task_splits_search_held_out_images_and_validate_on_test_images():
    task = make_task("tops")
    s1, s2 = task.splits(), task.splits()
    for a, b in [(s1.preprocessing, s2.preprocessing), (s1.search, s2.search),
                 (s1.validation, s2.validation)]:
        np.testing.assert_array_equal(a, b)
    parts = [set(s1.preprocessing), set(s1.search), set(s1.validation)]
    assert sum(len(p) for p in parts) == len(task.data) == len(set().union(*parts))
    assert len(s1.preprocessing) <= 0.02 * len(task.data)
    # Validation is exactly the task's test images; the others are held-out training
    # images, none of them seen by the shipped networks' training.
    test = load_fashion_mnist("test")
    np.testing.assert_array_equal(task.split("validation").images,
                                  test.images[np.isin(test.labels, task.classes)])
    held = load_fashion_mnist("heldout")
    pool = held.images[np.isin(held.labels, task.classes)]
    searched = np.concatenate([task.split("preprocessing").images,
                               task.split("search").images])
    assert len(searched) == len(pool)
    assert {x.tobytes() for x in searched} == {x.tobytes() for x in pool}


def test_a_folder_task_is_split_three_ways():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (300, 1, 4, 4), dtype=np.uint8)
    task = Task("folder", (0, 1), Dataset(images, rng.integers(0, 2, 300), ("a", "b")))
    s = task.splits()
    assert sum(map(len, (s.preprocessing, s.search, s.validation))) == 300
    assert len(s.preprocessing) == 6 and abs(len(s.search) - len(s.validation)) <= 1


def test_empty_task_is_an_error():
    empty = Dataset(np.zeros((0, 1, 4, 4), np.uint8), np.zeros(0, np.int64), ("a",))
    with pytest.raises(DataError, match="has no images"):
        Task("nothing", (0,), empty)


def test_classes_parse_names_and_reject_out_of_range():
    assert data.parse_classes("5,Sneaker,9", data.FASHION_MNIST_CLASSES) == (5, 7, 9)
    with pytest.raises(DataError, match="out of range"):
        data.parse_classes("3,12", data.FASHION_MNIST_CLASSES)
    with pytest.raises(DataError, match="unknown class"):
        data.parse_classes("socks", data.FASHION_MNIST_CLASSES)


def make_folder(root, sizes):
    for cls, size in sizes.items():
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full(size + (3,), 40 * i, np.uint8)).save(root / cls / f"{i}.png")


def test_image_folder_classes_labels_and_channels(tmp_path):
    make_folder(tmp_path, {"cat": (10, 12), "dog": (10, 12)})
    ds = data.load_folder(tmp_path, channels=3)
    assert ds.classes == ("cat", "dog")
    assert ds.images.shape == (6, 3, 10, 12)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.load_folder(tmp_path, channels=1, size=(28, 28)).images.shape == (6, 1, 28, 28)


def test_image_folder_with_mixed_sizes_needs_resize(tmp_path):
    make_folder(tmp_path, {"a": (10, 10), "b": (12, 12)})
    with pytest.raises(DataError, match="--image-size"):
        data.load_folder(tmp_path)


def test_fashion_mnist_tasks_resize_like_folders():
    small, big = make_task("bags"), make_task("bags", size=(64, 48))
    assert big.data.images.shape[1:] == (1, 64, 48)
    np.testing.assert_array_equal(big.splits().validation, small.splits().validation)
    first = Image.fromarray(small.data.images[0, 0]).resize((48, 64), Image.BILINEAR)
    np.testing.assert_array_equal(big.data.images[0, 0], np.asarray(first))
