"""``velcro run --device sim`` and ``--device golden`` through the runtime."""

import json

from velcro.sw import golden
from velcro.sw.cli import main
from velcro.sw.commands.deploy import predictions_sha256
from velcro.sw.data import make_task
from velcro.sw.export.package import load


def test_sim_and_golden_runs_agree_and_report_cycles(footwear_package, tmp_path, capsys):
    records, printed = {}, {}
    for device in ("golden", "sim"):
        out = tmp_path / f"{device}.json"
        assert main(["run", "--package", str(footwear_package), "--device", device,
                     "--images", "2", "--json", str(out)]) == 0
        records[device] = json.loads(out.read_text())
        printed[device] = capsys.readouterr().out
    package = load(footwear_package)
    images = make_task("footwear").split("validation").images[:2]
    expected = predictions_sha256(golden.run(package, images).argmax(1))
    assert records["golden"]["predictions_sha256"] == records["sim"]["predictions_sha256"] \
        == expected
    assert records["golden"]["macs_skipped"] == records["sim"]["macs_skipped"] > 0
    assert "cycles" not in records["golden"]
    cycles = records["sim"]["cycles"]
    assert [layer["name"] for layer in cycles["layers"]] == [
        "input", *[layer.name for layer in package.layers]]
    assert cycles["total"] > sum(layer["cycles"] for layer in cycles["layers"]) > 0
    assert cycles["per_image"] == cycles["total"] / 2
    assert records["sim"]["seconds"] > 0 and 0 <= records["sim"]["accuracy"] <= 1
    counted = records["sim"]["kernel_counters"]
    assert counted["match"] and counted["mac_cycles"] == counted["mac_cycles_expected"] > 0
    assert counted["skipped"] == counted["skipped_expected"] > 0
    assert "kernel_counters" not in records["golden"]
    # The simulator's build (Verilog generation and compile) is reported apart from the run.
    sim = records["sim"]
    # run_seconds is the same run time at two decimals (seconds has four).
    assert abs(sim["run_seconds"] - sim["seconds"]) <= 0.0051 and sim["build_seconds"] >= 0
    assert sim["build_seconds"] == cycles["build_seconds"]
    assert (f"simulator: {sim['build_seconds']} s to generate the Verilog and compile it, "
            f"{sim['run_seconds']} s to run") in printed["sim"]
    assert "build_seconds" not in records["golden"] and "simulator:" not in printed["golden"]


def test_the_simulation_runs_in_chunks_and_reports_each(capsys):
    import numpy as np

    from velcro.sw.commands.deploy import SIM_CHUNK, run_images

    class Device:
        def __init__(self):
            self.calls = []

        def run(self, images):
            self.calls.append(len(images))
            return images[:, :1].astype(np.int32)

    images = np.arange(2 * SIM_CHUNK + 5, dtype=np.uint8)[:, None]
    sim, gold = Device(), Device()
    np.testing.assert_array_equal(run_images(sim, images, "sim"), images)
    np.testing.assert_array_equal(run_images(gold, images, "golden"), images)
    assert sim.calls == [SIM_CHUNK, SIM_CHUNK, 5] and gold.calls == [len(images)]
    assert "[velcro] sim run: 25/25 img" in capsys.readouterr().err


def test_counters_that_differ_from_the_golden_model_fail_the_run_after_reporting(
        footwear_package, tmp_path, monkeypatch, capsys):
    """A kernel whose MAC-cycle or skip counts disagree with its golden model is an error
    (exit 2, naming the layer), after the summary and the record are out."""
    import dataclasses

    from velcro.sw.commands import deploy
    from velcro.sw.runtime import Accelerator

    def open_device(spec, package, args=None):
        device = Accelerator.open("golden")
        device.load(package)
        honest = device.counters
        device.counters = lambda: [dataclasses.replace(c, skipped=c.skipped + (i == 1))
                                   for i, c in enumerate(honest())]
        return device

    monkeypatch.setattr(deploy, "open_device", open_device)
    out = tmp_path / "run.json"
    assert main(["run", "--package", str(footwear_package), "--device", "alveo:0",
                 "--images", "3", "--json", str(out)]) == 2
    captured = capsys.readouterr()
    assert "footwear on alveo:0: accuracy" in captured.out
    name = load(footwear_package).layers[0].name
    assert f"skipped elements in {name} (CONV)" in captured.err.splitlines()[-1]
    counted = json.loads(out.read_text())["kernel_counters"]
    assert not counted["match"] and counted["skipped"] == counted["skipped_expected"] + 1


def test_compute_units_split_the_images_and_predict_as_one(footwear_package, tmp_path, capsys):
    """``--cus N`` on golden and sim: the same predictions as one unit, each unit's cycles
    recorded and adding up to the run's."""
    records = {}
    for device, cus, images in (("golden", 1, 5), ("golden", 3, 5), ("sim", 2, 2)):
        out = tmp_path / f"{device}-{cus}.json"
        assert main(["run", "--package", str(footwear_package), "--device", device,
                     "--images", str(images), "--cus", str(cus), "--json", str(out)]) == 0
        records[device, cus] = json.loads(out.read_text())
        printed = capsys.readouterr().out
        assert records[device, cus]["cus"] == cus
        if cus > 1:
            units = records[device, cus]["unit_cycles"]
            assert len(units) == cus and min(units) > 0
            assert f"{cus} compute units: " in printed
            assert f"the run takes the largest, {max(units) / images:,.1f} per image" in printed
        else:
            assert "unit_cycles" not in records[device, cus]
    one, three = records["golden", 1], records["golden", 3]
    assert one["predictions_sha256"] == three["predictions_sha256"]
    package = load(footwear_package)
    x = make_task("footwear").split("validation").images[:2]
    assert records["sim", 2]["predictions_sha256"] == predictions_sha256(
        golden.run(package, x).argmax(1))
    sim = records["sim", 2]
    assert sim["kernel_counters"]["match"]
    assert sum(sim["unit_cycles"]) == sim["cycles"]["total"]


def test_compute_units_out_of_range_are_refused(footwear_package, capsys):
    assert main(["run", "--package", str(footwear_package), "--cus", "0"]) == 2
    assert "compute units must be 1 to 16" in capsys.readouterr().err
