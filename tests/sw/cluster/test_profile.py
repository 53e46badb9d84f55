"""The profile computed by Ray tasks equals the single-process profile."""

import numpy as np
import pytest
import torch

from velcro.sw.cluster.profile import profile as ray_profile
from velcro.sw.cluster.profile import shard_ranges
from velcro.sw.data import FolderIndex, IdxImages, load_fashion_mnist, load_folder
from velcro.sw.locality.profile import profile
from velcro.sw.models import load_reference


def assert_same_profile(got, want, rtol=1e-12):
    assert got.count == want.count and got.names == want.names
    for a, b in zip(got.layers, want.layers, strict=True):
        np.testing.assert_allclose(a.mean, b.mean, rtol=rtol, atol=0)
        np.testing.assert_allclose(a.variance, b.variance, rtol=rtol, atol=0)
        if b.grad_sq is None:
            assert a.grad_sq is None
        else:
            np.testing.assert_allclose(a.grad_sq, b.grad_sq, rtol=rtol, atol=0)


@pytest.mark.parametrize("n, shards, batch, expected", [
    (1000, 4, 250, [(0, 250), (250, 500), (500, 750), (750, 1000)]),
    (1003, 4, 250, [(0, 250), (250, 500), (500, 750), (750, 1003)]),
    (100, 4, 250, [(0, 100)]),
    (10, 3, 3, [(0, 3), (3, 6), (6, 10)])])
def test_shards_are_whole_batches(n, shards, batch, expected):
    ranges = shard_ranges(n, shards, batch)
    assert ranges == expected
    assert all(a % batch == 0 for a, _ in ranges)


def test_four_shards_equal_one_process_with_sensitivity(ray_local):
    model = load_reference()
    images = load_fashion_mnist("test").images[:400]
    want = profile(model, images, batch_size=100, sensitivity=True)
    got = ray_profile(model, images, batch_size=100, sensitivity=True, shards=4)
    assert_same_profile(got, want)
    assert got.has_sensitivity
    # A different sharding: the same profile, up to rounding.
    assert_same_profile(ray_profile(model, images, batch_size=100, shards=3),
                        profile(model, images, batch_size=100))


def test_workers_read_their_own_range_of_an_idx_file(ray_local):
    model = load_reference()
    source = IdxImages.fashion_mnist("test")
    assert len(source) == 10000
    want = load_fashion_mnist("test").images
    np.testing.assert_array_equal(source.read(9990, 10000), want[9990:])
    assert source.read(5, 5).shape == (0, 1, 28, 28)
    got = ray_profile(model, _Prefix(source, 750), shards=3)
    assert_same_profile(got, profile(model, want[:750]))


def test_an_image_folder_is_decoded_by_the_workers(ray_local, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(15):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                tmp_path / name / f"{i}.png")
    index = FolderIndex.scan(tmp_path, channels=1)
    data = load_folder(tmp_path, channels=1)
    assert len(index) == 30 and list(index.labels) == list(data.labels)
    np.testing.assert_array_equal(index.read(3, 17), data.images[3:17])
    model = load_reference()
    assert_same_profile(ray_profile(model, index, batch_size=8, shards=2),
                        profile(model, data.images, batch_size=8))


def test_the_profile_does_not_depend_on_the_drivers_threads(ray_local):
    model = load_reference()
    images = load_fashion_mnist("test").images[:500]
    before = torch.get_num_threads()
    got = ray_profile(model, images, shards=2, threads=1)
    assert torch.get_num_threads() == before
    assert_same_profile(got, profile(model, images))


class _Prefix:
    """The first ``n`` images of a lazy source (a source is anything with len() and read)."""

    def __init__(self, source, n):
        self.source, self.n = source, n

    def __len__(self):
        return self.n

    def read(self, start, stop):
        return self.source.read(start, min(stop, self.n))


def test_velcro_profile_of_a_folder_on_ray_leaves_decoding_to_the_workers(
        ray_local, tmp_path, monkeypatch):
    from PIL import Image

    from velcro.sw import data
    from velcro.sw.cli import main
    from velcro.sw.locality.profile import Profile

    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(200):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                root / name / f"{i}.png")
    argv = ["profile", "--data", str(root), "--classes", "a,b", "--sensitivity"]
    assert main([*argv, "--out", str(tmp_path / "one.npz")]) == 0
    read = []
    original = data.FolderIndex.read
    monkeypatch.setattr(data, "load_folder", None)  # the driver must not load the folder
    monkeypatch.setattr(data.FolderIndex, "read",
                        lambda self, a, b, limit=None: read.append(b - a) or original(self, a, b))
    assert main([*argv, "--ray", "local:2", "--out", str(tmp_path / "ray.npz")]) == 0
    # Only the first image, twice: to check the model's input, and for the activations
    # every shard shifts its batches by.
    assert read == [1, 1]
    one, ray = Profile.load(tmp_path / "one.npz"), Profile.load(tmp_path / "ray.npz")
    assert one.count == 8 and one.meta == ray.meta
    assert_same_profile(ray, one)
