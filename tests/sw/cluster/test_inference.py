"""``velcro run`` over several golden workers: the same predictions and counters as one
device, and a worker that dies has its shard run again elsewhere."""

import json
import os
from argparse import Namespace

import numpy as np
import pytest

from velcro.sw.cli import main
from velcro.sw.cluster.inference import DeviceWorker, ShardedDevice, shards
from velcro.sw.commands.deploy import device_specs, predictions_sha256
from velcro.sw.data import make_task
from velcro.sw.errors import ClusterError, DeviceError
from velcro.sw.export.package import load
from velcro.sw.runtime import Accelerator

N = 60


@pytest.fixture(scope="module")
def footwear(footwear_package):
    return load(footwear_package), make_task("footwear").split("validation").images[:N]


@pytest.mark.parametrize("device, workers, expected", [
    ("golden", None, ["golden"]), ("golden", 3, ["golden"] * 3), ("sim", 2, ["sim", "sim"]),
    ("alveo:1", None, ["alveo:1"]), ("alveo:0,2", None, ["alveo:0", "alveo:2"]),
    ("alveo:0,1", 2, ["alveo:0", "alveo:1"])])
def test_device_specs(device, workers, expected):
    assert device_specs(Namespace(device=device, workers=workers)) == expected


@pytest.mark.parametrize("device, workers, pattern", [
    ("golden", 0, "at least 1"), ("alveo:0,0", None, "names a card twice"),
    ("alveo:0,1", 3, "one worker per card"), ("alveo", 2, "name several cards"),
    ("golden:0,1", None, "unknown device")])
def test_bad_device_specs(device, workers, pattern):
    with pytest.raises(DeviceError, match=pattern):
        device_specs(Namespace(device=device, workers=workers))


def test_shards_cover_the_images_in_order():
    assert shards(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shards(2, 4) == [(0, 1), (1, 2)]


def test_two_workers_give_the_predictions_and_counts_of_one(ray_local, footwear_package,
                                                             tmp_path):
    records = {}
    for workers in (1, 2):
        out = tmp_path / f"{workers}.json"
        assert main(["run", "--package", str(footwear_package), "--images", str(N),
                     "--workers", str(workers), "--json", str(out)]) == 0
        records[workers] = json.loads(out.read_text())
    one, two = records[1], records[2]
    assert (one["workers"], two["workers"]) == (1, 2)
    for key in ("predictions_sha256", "accuracy", "macs", "macs_skipped", "layers"):
        assert one[key] == two[key], key


def test_the_kernel_counters_of_the_workers_add_up_to_one_device(ray_local, footwear):
    package, images = footwear
    single = Accelerator.open("golden")
    single.load(package)
    expected = single.run(images)
    device = ShardedDevice(["golden", "golden"], package, {})
    try:
        np.testing.assert_array_equal(device.run(images), expected)
        assert device.counters() == single.counters()
        assert device.counts() == single.counts()
        # Every kernel call has a few cycles of its own: the run total is that of one
        # device running the two shards one after the other, the rest that of one run.
        halves = Accelerator.open("golden")
        halves.load(package)
        halves.run(images[:N // 2])
        halves.run(images[N // 2:])
        assert device.totals == halves.totals
        assert {k: v for k, v in device.totals.items() if k != "cycles"} == \
            {k: v for k, v in single.totals.items() if k != "cycles"}
        assert device.totals["mac_cycles"] > 0
    finally:
        device.close()
        single.close()


class DiesOnShard(DeviceWorker):
    """A golden worker whose process exits when it is given the shard starting at
    ``marked`` (by ``victim`` only, or by any worker)."""

    marked, victim = N // 2, "golden-1"

    def run(self, images, start):
        if start == self.marked and self.victim in (None, self.name):
            os._exit(3)
        return super().run(images, start)


class DiesAnywhere(DiesOnShard):
    victim = None


def test_a_dead_workers_shard_is_run_again_on_a_healthy_one(ray_local, footwear, capsys):
    package, images = footwear
    single = Accelerator.open("golden")
    single.load(package)
    expected = predictions_sha256(single.run(images).argmax(1))
    device = ShardedDevice(["golden", "golden"], package, {}, worker=DiesOnShard)
    try:
        logits = device.run(images)
        assert predictions_sha256(logits.argmax(1)) == expected
        assert device.dead == {1} and device.images == N
        err = capsys.readouterr().err
        assert "worker golden-1 died (" in err and "re-running its shard on golden-0" in err
        # The survivor ran every image: its counters are those of one device.
        assert device.counters() == single.counters()
    finally:
        device.close()
        single.close()


def test_a_second_failure_is_an_error(ray_local, footwear, capsys):
    package, images = footwear
    device = ShardedDevice(["golden", "golden"], package, {}, worker=DiesAnywhere)
    try:
        with pytest.raises(ClusterError, match=r"worker golden-0 died too .* re-running the "
                           r"shard of golden-1 \(images 30:60\); giving up"):
            device.run(images)
        assert "worker golden-1 died" in capsys.readouterr().err
    finally:
        device.close()
