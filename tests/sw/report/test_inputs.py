"""The inputs of the report: a bad or missing result file stops it with one line naming
the file (:mod:`velcro.sw.report.inputs`)."""

import json
import shutil

import pytest


@pytest.mark.parametrize("name, content, message", [
    ("velcro_curves.json", '[{"task": "a",', "velcro_curves.json: not valid JSON "
     "(Expecting property name enclosed in double quotes at line 1, column 15)"),
    ("vq_sweep.json", '{"baseline_accuracy": 0.9, "points": []}',
     "vq_sweep.json: points must be a non-empty list, not an empty list; expected "
     "what `velcro vq --sweep` writes"),
    ("estimate.json", json.dumps({"resources": {"LUT": {"used": 5}}}),
     "estimate.json: resources.LUT has no 'available' key"),
    ("estimate.json", json.dumps({"resources": {"DSP": {"used": 5, "available": "9024"}}}),
     "estimate.json: resources.DSP.available must be a positive integer, not '9024'"),
    ("bench_hw.json", json.dumps({"conv_cycles_reference": {"conv1": {
        "shape": "x", "cycles": 0, "cycles_velcro": 0, "skipped_fraction": 0.4}}}),
     "bench_hw.json: conv_cycles_reference.conv1.cycles must be a positive integer"),
    ("bench_hw.json", "[1, 2]", "bench_hw.json: the top level must be an object, not a list of 2"),
    ("deep_compression.json", "{}", "deep_compression.json: the top level has no 'models' key"),
    ("velcro_table.json", json.dumps([{"task": "a", "criterion": "variance", "thresholds": [
        10, "20"], "C": 0.1, "baseline_accuracy": 0.9, "accuracy": 0.9}]),
     "velcro_table.json: [0].thresholds[1] must be a number, not '20'; expected what "
     "`velcro demo` writes"),
])
def test_a_bad_input_is_one_line_naming_the_file_and_keeps_the_old_report(
        results, full_report, tmp_path, copy_results, run_report, name, content, message):
    folder = copy_results(results, tmp_path / "results", [p.name for p in results.iterdir()])
    out = tmp_path / "report"
    shutil.copytree(full_report[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (folder / name).write_text(content)
    code, _, err = run_report(["--results", folder, "--out", out])
    assert code == 2
    assert err.count("\n") == 1 and f"velcro: error: {folder / name}" in err
    assert message in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_vq_points_the_plot_cannot_draw_are_an_error(results, tmp_path, copy_results,
                                                     run_report):
    folder = copy_results(results, tmp_path / "results", ["vq_sweep.json"])
    sweep = json.loads((folder / "vq_sweep.json").read_text())
    sweep["points"][0] = {**sweep["points"][0], "method": "lsh"}
    (folder / "vq_sweep.json").write_text(json.dumps(sweep))
    code, _, err = run_report(["--results", folder, "--out", tmp_path / "report"])
    assert code == 2
    assert "vq_sweep.json: points[0].method must be one of bin, km, pq, rq, svd, not 'lsh'" in err


def test_a_named_file_must_exist(tmp_path, run_report):
    code, _, err = run_report(["--out", tmp_path / "report", "--bench-hw", tmp_path / "no.json"])
    assert code == 2 and err.count("\n") == 1
    assert f"--bench-hw {tmp_path / 'no.json'}: no such file" in err
    assert not (tmp_path / "report").exists()
