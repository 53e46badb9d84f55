"""The sections of the report: every section's tables hold the measured values, and the
bench files combine as documented (:mod:`velcro.sw.report.sections`)."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from velcro.sw.report.plots import PLOT_FILES


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_report_holds_every_section_with_the_measured_values(results, full_report, page_tables,
                                                              find_row, non_blank):
    out, stdout = full_report
    assert "not measured" not in stdout and stdout.count("rendered") == 8
    assert f"wrote {out / 'index.html'}, {out / 'report.md'} and 4 plots" in stdout
    tables = page_tables(out)

    velcro = next(rows for caption, rows in tables.items() if caption.startswith("Search"))
    records = json.loads((results / "velcro_table.json").read_text())
    assert len(velcro) == 1 + len(records) == 4
    for r in records:
        row = find_row(velcro, r["task"], r["criterion"])
        assert row[2] == str(r["n_validation"])
        assert _number(row[3]) == pytest.approx(100 * r["baseline_accuracy"], abs=0.005)
        assert [float(t) for t in row[4].split(", ")] == r["thresholds"]
        assert _number(row[5]) == pytest.approx(100 * r["C"], abs=0.005)
        assert _number(row[6]) == pytest.approx(100 * r["accuracy"], abs=0.005)
        assert _number(row[8]) == pytest.approx(100 * r["max_C_no_loss"], abs=0.05)

    sweep = json.loads((results / "vq_sweep.json").read_text())
    vq_rows = tables["Every configuration of the sweep"]
    assert vq_rows[0][-1] == "accuracy fine-tuned 1 epoch(s) (%)"
    for p in sweep["points"]:
        params = " ".join(f"{k}={v}" for k, v in p["params"].items()) or "—"
        row = find_row(vq_rows, p["method"], params)
        assert _number(row[2]) == pytest.approx(p["compression_rate"], abs=0.005)
        column = 4 if p["finetune_epochs"] else 3
        assert _number(row[column]) == pytest.approx(100 * p["accuracy"], abs=0.005)
    assert find_row(vq_rows, "bin", "—")[4] == "—"        # only KM k=4 was fine-tuned

    deep = json.loads((results / "deep_compression.json").read_text())["models"][0]
    row = find_row(tables["Accuracy and storage per stage"], "tiny_cnn", "huffman")
    assert _number(row[2]) == pytest.approx(100 * deep["accuracy"]["huffman"], abs=0.005)
    assert _number(row[3]) == pytest.approx(deep["storage_bits"]["huffman"] / 8192, abs=0.05)
    assert _number(row[4]) == pytest.approx(deep["compression"]["huffman"], abs=0.05)

    cycles = tables["Cycles per conv layer"]
    assert find_row(cycles, "conv2") == ["conv2", "32->32 28x28 stride 1", "50,192", "30,227",
                                     "39.8", "39.8", "1.00"]
    total, velcro_total = 25104 + 50192 + 25104 + 12560, 15121 + 30227 + 15180 + 7660
    assert find_row(cycles, "all layers")[2:5] == [f"{total:,}", f"{velcro_total:,}",
                                               f"{100 * (1 - velcro_total / total):.1f}"]
    assert find_row(tables["Resources used"], "LUT") == ["LUT", "98,765", "1,303,680", "7.58"]
    assert find_row(tables["Resources used"], "BRAM36") == ["BRAM36", "88.5", "2,016", "4.39"]
    assert find_row(tables["Measured figures"], "conv_utilization")[1] == "0.9412"
    assert find_row(tables["Measured figures"], "sim_verilator_cycles_per_s") == [
        "sim_verilator_cycles_per_s", "187,342", "cycles/s"]
    assert "conv_cycles_reference" not in str(tables["Measured figures"])
    yosys = tables["Yosys synth_xilinx -family xcup per engine"]
    assert yosys[0] == ["engine", "LUT", "FF", "DSP48E2", "BRAM36", "URAM", "Yosys time (s)"]
    assert find_row(yosys, "conv_array")[1:4] == ["61,234", "40,211", "145"]

    page = (out / "index.html").read_text()
    assert "Copies of the conv array that would fit: 13." in page
    for key, name in PLOT_FILES.items():
        assert f'<figure class="plot" id="plot-{key}"><img src="{name}"' in page
        assert f"]({name})" in (out / "report.md").read_text()
        assert non_blank(np.asarray(Image.open(out / name).convert("RGB")))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.html", "report.md", *PLOT_FILES.values()])


def test_a_combined_bench_file_serves_cycles_and_resources(tmp_path, bench_hw, estimate,
                                                           run_report, page_tables, find_row):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "bench.json").write_text(json.dumps({**bench_hw, **estimate, "images_per_s": 812}))
    out = tmp_path / "report"
    code, stdout, _ = run_report(["--results", folder, "--out", out])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == [PLOT_FILES["cycles"],
                                                          PLOT_FILES["resources"]]
    tables = page_tables(out)
    assert find_row(tables["Resources used"], "URAM") == ["URAM", "0", "960", "0.00"]
    assert find_row(tables["Cycles per conv layer"], "conv1")[2] == "25,104"
    assert find_row(tables["Measured figures"], "images_per_s")[1] == "812"
    for title in ("Cycles per conv layer with and without VELCRO",
                  "Resources against U280 capacity"):
        assert re.search(rf"^rendered +{title} +{re.escape(str(folder / 'bench.json'))}$",
                         stdout, re.MULTILINE)


def test_the_dedicated_files_win_over_the_combined_one(results, tmp_path, bench_hw, estimate,
                                                       copy_results, run_report, page_tables,
                                                       find_row):
    folder = copy_results(results, tmp_path / "results", ["bench_hw.json"])
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps(estimate))
    layers = {"conv1": {**bench_hw["conv_cycles_reference"]["conv1"], "cycles": 99999}}
    (folder / "bench.json").write_text(json.dumps({"conv_cycles_reference": layers,
                                                   "resources": {"LUT": {"used": 1,
                                                                         "available": 2}}}))
    out = tmp_path / "report"
    assert run_report(["--results", folder, "--out", out, "--estimate", other])[0] == 0
    tables = page_tables(out)
    assert find_row(tables["Cycles per conv layer"], "conv1")[2] == "25,104"
    assert len(tables["Resources used"]) == 1 + 5
    status = page_tables(out)["Sections"]
    assert find_row(status, "Resources against U280 capacity")[2] == str(other)


def test_inconsistent_velcro_files_are_an_error(results, tmp_path, copy_results, run_report):
    folder = copy_results(results, tmp_path / "results",
                          ["velcro_curves.json", "velcro_table.json"])
    table = json.loads((folder / "velcro_table.json").read_text())
    (folder / "velcro_table.json").write_text(json.dumps(
        [r for r in table if (r["task"], r["criterion"]) != ("tiny-a", "relative")]))
    code, _, err = run_report(["--results", folder, "--out", tmp_path / "report"])
    assert code == 2 and err.count("\n") == 1
    assert (f"{folder / 'velcro_table.json'}: no record of task 'tiny-a' with criterion "
            f"'relative', whose curve {folder / 'velcro_curves.json'} holds") in err


def test_compress_and_run_records_of_the_results_folder_are_gathered(results, full_report,
                                                                     page_tables, find_row):
    out, stdout = full_report
    assert re.search(r"^rendered +Your compressions \(velcro compress\) +\S*compress_bags.json$",
                     stdout, re.M)
    assert re.search(r"^rendered +Package runs \(velcro run\) +\S*run_golden.json$", stdout,
                     re.M)
    tables = page_tables(out)
    compress = json.loads((results / "compress_bags.json").read_text())
    row = find_row(tables["velcro compress records"], "compress_bags.json")
    assert row[1:4] == ["bags", "variance", "10, 20, 20, 10"]
    assert _number(row[4]) == pytest.approx(100 * compress["C"], abs=0.005)
    assert _number(row[5]) == pytest.approx(100 * compress["accuracy"], abs=0.005)
    assert row[8] == str(compress["n_validation"])
    run = json.loads((results / "run_golden.json").read_text())
    row = find_row(tables["velcro run records"], "run_golden.json")
    assert row[1:5] == ["bags.velcro", "golden", "bags", "40"]
    assert _number(row[5]) == pytest.approx(100 * run["accuracy"], abs=0.005)
    assert row[6] == "—" and row[-1] == run["predictions_sha256"][:12]
    assert not any("notes.json" in cell for rows in tables.values() for r in rows
                   for cell in r)


def test_a_malformed_record_stops_the_report_naming_it(results, tmp_path, copy_results,
                                                       run_report):
    folder = copy_results(results, tmp_path / "bad", ["run_golden.json"])
    record = json.loads((folder / "run_golden.json").read_text())
    record["images"] = "forty"
    (folder / "run_golden.json").write_text(json.dumps(record))
    code, _, err = run_report(["--results", folder, "--out", tmp_path / "out"])
    assert code == 2
    assert f"{folder / 'run_golden.json'}: images must be a positive integer" in err


def test_the_vq_table_shows_held_out_accuracy_and_the_selection_rule(tmp_path):
    from velcro.sw.report.sections import Section, vq_section

    points = [{"method": "km", "params": {"k": k}, "finetune_epochs": e,
               "compression_rate": 32 / k, "accuracy": 0.9 - 0.01 * k - 0.001 * e,
               "heldout_accuracy": 0.8 + 0.01 * k + 0.001 * e}
              for k in (2, 4) for e in (0, 1)]
    path = tmp_path / "vq_sweep.json"
    path.write_text(json.dumps({"baseline_accuracy": 0.93, "points": points,
                                "heldout_baseline_accuracy": 0.92,
                                "selection": "chosen on held-out images"}))
    section = Section("vq", "VQ", "velcro vq --sweep", [path])
    vq_section(section, path)
    (table,) = section.tables
    assert table.header[3:] == ["accuracy plain (%)", "held-out plain (%)",
                                "accuracy fine-tuned 1 epoch(s) (%)", "held-out fine-tuned (%)"]
    row = next(r for r in table.rows if r[1] == "k=4")
    assert [float(c) for c in row[3:]] == pytest.approx([86.0, 84.0, 85.9, 84.1], abs=0.005)
    assert any("chosen on held-out images" in t for t in section.text)
