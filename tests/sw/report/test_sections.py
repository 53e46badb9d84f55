"""``velcro report``: the page and the Markdown hold every section's tables and plots,
missing inputs become notes, bad inputs one-line errors, and the page renders in
headless Chromium with every plot visible.

The VELCRO, VQ and Deep Compression inputs come from the real producers
(:func:`velcro.sw.study.demo_task`, :func:`velcro.sw.vq.sweep`,
:func:`velcro.sw.deepcompress.deep_compress`) run on a tiny model and random images;
the hardware figures are fixtures in the shape their writers give them.
"""

import contextlib
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from velcro.sw import vq
from velcro.sw.cli import main
from velcro.sw.commands.vq import COUNTED
from velcro.sw.data import Dataset, Task
from velcro.sw.deepcompress import LayerSetting, Schedule, deep_compress
from velcro.sw.report import PLOT_FILES
from velcro.sw.study import demo_files, demo_task

BENCH_HW = {
    "conv_utilization": 0.9412,
    "conv_cycles_reference": {
        "conv1": {"shape": "1->32 28x28 stride 1", "cycles": 25104, "cycles_velcro": 15121,
                  "skipped_fraction": 0.4},
        "conv2": {"shape": "32->32 28x28 stride 1", "cycles": 50192, "cycles_velcro": 30227,
                  "skipped_fraction": 0.398},
        "conv3": {"shape": "32->64 14x14 stride 1", "cycles": 25104, "cycles_velcro": 15180,
                  "skipped_fraction": 0.401},
        "conv4": {"shape": "64->64 7x7 stride 1", "cycles": 12560, "cycles_velcro": 7660,
                  "skipped_fraction": 0.393},
    },
    "dense_cycles_over_bound": 1.0313,
    "sim_verilator_cycles_per_s": 187342,
    "yosys_conv_array": {"lut": 61234, "ff": 40211, "dsp48e2": 145, "bram36": 72.5,
                         "uram": 0, "yosys_seconds": 51.2},
}
ESTIMATE = {
    "resources": {
        "LUT": {"used": 98765, "available": 1303680, "percent": 7.58},
        "FF": {"used": 123456, "available": 2607360, "percent": 4.73},
        "DSP": {"used": 163, "available": 9024, "percent": 1.81},
        "BRAM36": {"used": 88.5, "available": 2016, "percent": 4.39},
        "URAM": {"used": 0, "available": 960, "percent": 0.0},
    },
    "conv_arrays_that_fit": 13,
}
ALL_PLOTS = {"velcro", "vq", "cycles", "resources"}


def _tiny_task(name: str, seed: int) -> Task:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (120, 1, 6, 6)).astype(np.uint8)
    data = Dataset(images, rng.integers(0, 3, 120), ("a", "b", "c"))
    return Task(name, (0, 1, 2), data, preprocessing_fraction=0.1)


def _tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(144, 16), nn.ReLU(), nn.Linear(16, 3))


def _vq_sweep(model: nn.Sequential, task: Task) -> dict:
    """Plain points of every sixth sweep configuration, and a fine-tuned KM point."""
    images, labels = task.data.images, task.data.labels
    head = vq.DenseHead(model, images, labels)
    weights = vq.dense_weights(model, ["5"])
    configs = vq.sweep_configs(weights["5"].shape)[::6]
    points = vq.sweep(head, weights, configs, progress=False)
    tuning = vq.Tuning(vq.DenseHead(model, images, labels), 1, seed=0)
    points += vq.evaluate(head, vq.quantize_layers(weights, "km", {"k": 4}), "km", {"k": 4},
                          tuning)[1:]
    return {"baseline_accuracy": head.accuracy(), "layers": ["5"], "counted": COUNTED,
            "points": points}


@pytest.fixture(scope="session")
def results(tmp_path_factory) -> Path:
    """A results folder with every input of the report."""
    # On tensors this small, torch's intra-op threads cost more than they save.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _write_results(tmp_path_factory.mktemp("results"))
    finally:
        torch.set_num_threads(threads)


def _write_results(folder: Path) -> Path:
    model = _tiny_model()
    tasks = [_tiny_task("tiny-a", 1), _tiny_task("tiny-b", 2)]
    demo = [demo_task(model, tasks[0], ("variance", "relative")),
            demo_task(model, tasks[1], ("variance",))]
    for name, content in demo_files(demo).items():
        (folder / name).write_text(json.dumps(content))
    (folder / "vq_sweep.json").write_text(json.dumps(_vq_sweep(model, tasks[0])))
    data = tasks[0].data
    deep = deep_compress(model, {"5": LayerSetting(0.5, 4, 4), "7": LayerSetting(0.8, 4, 4)},
                         data.images, data.labels, data.images, data.labels,
                         Schedule(prune_steps=1, finetune_epochs=0), progress=False)
    (folder / "deep_compression.json").write_text(json.dumps(
        {"models": [{"model": "tiny_cnn", "dataset": "random images", **deep}]}))
    (folder / "bench_hw.json").write_text(json.dumps(BENCH_HW))
    (folder / "estimate.json").write_text(json.dumps(ESTIMATE))
    return folder


@pytest.fixture(scope="session")
def full_report(results, tmp_path_factory) -> tuple[Path, str]:
    """The report of every input: its folder (tests that change it work on a copy) and
    what the command printed."""
    out = tmp_path_factory.mktemp("full") / "report"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    return out, printed.getvalue()


def _copy(results: Path, folder: Path, names) -> Path:
    folder.mkdir()
    for name in names:
        shutil.copy(results / name, folder / name)
    return folder


def _report(argv, capsys) -> tuple[int, str, str]:
    code = main(["report", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


class _Tables(HTMLParser):
    """Every ``<table>`` of a page as its caption and rows of cell text."""

    def __init__(self, page: str):
        super().__init__()
        self.tables, self._cell = [], None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"caption": "", "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th", "caption"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1]["rows"][-1].append(self._cell)
        elif tag == "caption":
            self.tables[-1]["caption"] = self._cell
        if tag in ("td", "th", "caption"):
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _markdown_tables(text: str) -> list[dict]:
    """Every Markdown table as its bold caption and rows of cell text (rule row dropped)."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and not lines[i - 1].startswith("|"):
            tables.append({"caption": lines[i - 2].strip("*"), "rows": []})
        if line.startswith("|") and not re.fullmatch(r"\|( -+:? \|)+", line):
            cells = re.split(r"(?<!\\)\|", line)[1:-1]
            tables[-1]["rows"].append([c.strip().replace("\\|", "|").replace("`", "")
                                       for c in cells])
    return tables


def _tables(out: Path) -> dict[str, list[list[str]]]:
    """The tables of the page by caption, after checking the Markdown holds the same."""
    page = _Tables((out / "index.html").read_text()).tables
    assert page == _markdown_tables((out / "report.md").read_text())
    return {t["caption"]: t["rows"] for t in page}


def _row(rows: list[list[str]], *first: str) -> list[str]:
    matches = [r for r in rows if tuple(r[:len(first)]) == first]
    assert len(matches) == 1, f"one row starting {first} expected in {rows}"
    return matches[0]


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def _non_blank(pixels: np.ndarray) -> bool:
    """More than 2 % of the pixels are not near-white, and they are not one flat colour."""
    grey = pixels.astype(float).mean(axis=-1)
    return (grey < 240).mean() > 0.02 and grey.std() > 10


def test_report_holds_every_section_with_the_measured_values(results, full_report):
    out, stdout = full_report
    assert "not measured" not in stdout and stdout.count("rendered") == 6
    assert f"wrote {out / 'index.html'}, {out / 'report.md'} and 4 plots" in stdout
    tables = _tables(out)

    velcro = next(rows for caption, rows in tables.items() if caption.startswith("Search"))
    records = json.loads((results / "velcro_table.json").read_text())
    assert len(velcro) == 1 + len(records) == 4
    for r in records:
        row = _row(velcro, r["task"], r["criterion"])
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
        row = _row(vq_rows, p["method"], params)
        assert _number(row[2]) == pytest.approx(p["compression_rate"], abs=0.005)
        column = 4 if p["finetune_epochs"] else 3
        assert _number(row[column]) == pytest.approx(100 * p["accuracy"], abs=0.005)
    assert _row(vq_rows, "bin", "—")[4] == "—"        # only KM k=4 was fine-tuned

    deep = json.loads((results / "deep_compression.json").read_text())["models"][0]
    row = _row(tables["Accuracy and storage per stage"], "tiny_cnn", "huffman")
    assert _number(row[2]) == pytest.approx(100 * deep["accuracy"]["huffman"], abs=0.005)
    assert _number(row[3]) == pytest.approx(deep["storage_bits"]["huffman"] / 8192, abs=0.05)
    assert _number(row[4]) == pytest.approx(deep["compression"]["huffman"], abs=0.05)

    cycles = tables["Cycles per conv layer"]
    assert _row(cycles, "conv2") == ["conv2", "32->32 28x28 stride 1", "50,192", "30,227",
                                     "39.8", "39.8", "1.00"]
    total, velcro_total = 25104 + 50192 + 25104 + 12560, 15121 + 30227 + 15180 + 7660
    assert _row(cycles, "all layers")[2:5] == [f"{total:,}", f"{velcro_total:,}",
                                               f"{100 * (1 - velcro_total / total):.1f}"]
    assert _row(tables["Resources used"], "LUT") == ["LUT", "98,765", "1,303,680", "7.58"]
    assert _row(tables["Resources used"], "BRAM36") == ["BRAM36", "88.5", "2,016", "4.39"]
    assert _row(tables["Measured figures"], "conv_utilization")[1] == "0.9412"
    assert _row(tables["Measured figures"], "sim_verilator_cycles_per_s") == [
        "sim_verilator_cycles_per_s", "187,342", "cycles/s"]
    assert "conv_cycles_reference" not in str(tables["Measured figures"])
    yosys = tables["Yosys synth_xilinx -family xcup per engine"]
    assert yosys[0] == ["engine", "LUT", "FF", "DSP48E2", "BRAM36", "URAM", "Yosys time (s)"]
    assert _row(yosys, "conv_array")[1:4] == ["61,234", "40,211", "145"]

    page = (out / "index.html").read_text()
    assert "Copies of the conv array that would fit: 13." in page
    for key, name in PLOT_FILES.items():
        assert f'<figure class="plot" id="plot-{key}"><img src="{name}"' in page
        assert f"]({name})" in (out / "report.md").read_text()
        assert _non_blank(np.asarray(Image.open(out / name).convert("RGB")))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.html", "report.md", *PLOT_FILES.values()])


def test_missing_inputs_become_notes_and_their_old_plots_go(results, full_report, tmp_path,
                                                           capsys):
    out = tmp_path / "report"
    shutil.copytree(full_report[0], out)
    some = _copy(results, tmp_path / "some", ["bench_hw.json", "velcro_table.json"])
    code, stdout, _ = _report(["--results", some, "--out", out], capsys)
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].endswith(f"run: velcro demo --out {some}")
    assert lines[1].endswith(f"run: velcro vq --sweep --out {some}")
    assert lines[2].endswith(f"run: velcro deepcompress --out {some}")
    assert re.fullmatch(rf"rendered +Cycles per conv layer with and without VELCRO +"
                        rf"{re.escape(str(some / 'bench_hw.json'))}", lines[3])
    assert lines[4].endswith(f"run: velcro build estimate --json {some / 'estimate.json'}")
    assert lines[5].startswith("rendered      Other hardware figures")
    assert sum(line.startswith("not measured") for line in lines) == 4
    assert lines[-1].endswith("and 1 plot")
    page = (out / "index.html").read_text()
    assert page.count('class="plot"') == 1 and 'id="plot-cycles"' in page
    assert (f'<p class="missing">Not measured — run <code>velcro build estimate --json '
            f'{some / "estimate.json"}</code>.</p>') in page
    assert f"> Not measured — run `velcro demo --out {some}`." in (out / "report.md").read_text()
    assert sorted(p.name for p in out.glob("*.png")) == [PLOT_FILES["cycles"]]
    status = _tables(out)["Sections"]
    assert _row(status, "Cycles per conv layer with and without VELCRO")[1:] == [
        "rendered", str(some / "bench_hw.json")]
    assert _row(status, "Deep Compression")[1:] == [
        "not measured", f"run velcro deepcompress --out {some}"]


def test_a_report_into_the_results_folder_leaves_their_files(results, tmp_path, capsys):
    folder = _copy(results, tmp_path / "demo", ["bench_hw.json"])
    theirs = {"vq_sweep.png": b"sweep", "velcro_accuracy_vs_C.png": b"curves",
              "bench_hw.json": (folder / "bench_hw.json").read_bytes()}
    for name, content in theirs.items():
        (folder / name).write_bytes(content)
    assert _report(["--results", folder, "--out", folder], capsys)[0] == 0
    assert {name: (folder / name).read_bytes() for name in theirs} == theirs
    assert (folder / PLOT_FILES["cycles"]).is_file() and (folder / "index.html").is_file()


def test_a_combined_bench_file_serves_cycles_and_resources(results, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "bench.json").write_text(json.dumps({**BENCH_HW, **ESTIMATE, "images_per_s": 812}))
    out = tmp_path / "report"
    code, stdout, _ = _report(["--results", folder, "--out", out], capsys)
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == [PLOT_FILES["cycles"],
                                                          PLOT_FILES["resources"]]
    tables = _tables(out)
    assert _row(tables["Resources used"], "URAM") == ["URAM", "0", "960", "0.00"]
    assert _row(tables["Cycles per conv layer"], "conv1")[2] == "25,104"
    assert _row(tables["Measured figures"], "images_per_s")[1] == "812"
    for title in ("Cycles per conv layer with and without VELCRO",
                  "Resources against U280 capacity"):
        assert re.search(rf"^rendered +{title} +{re.escape(str(folder / 'bench.json'))}$",
                         stdout, re.MULTILINE)


def test_the_dedicated_files_win_over_the_combined_one(results, tmp_path, capsys):
    folder = _copy(results, tmp_path / "results", ["bench_hw.json"])
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps(ESTIMATE))
    layers = {"conv1": {**BENCH_HW["conv_cycles_reference"]["conv1"], "cycles": 99999}}
    (folder / "bench.json").write_text(json.dumps({"conv_cycles_reference": layers,
                                                   "resources": {"LUT": {"used": 1,
                                                                         "available": 2}}}))
    out = tmp_path / "report"
    assert _report(["--results", folder, "--out", out, "--estimate", other], capsys)[0] == 0
    tables = _tables(out)
    assert _row(tables["Cycles per conv layer"], "conv1")[2] == "25,104"
    assert len(tables["Resources used"]) == 1 + 5
    status = _tables(out)["Sections"]
    assert _row(status, "Resources against U280 capacity")[2] == str(other)


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
        results, full_report, tmp_path, capsys, name, content, message):
    folder = _copy(results, tmp_path / "results", [p.name for p in results.iterdir()])
    out = tmp_path / "report"
    shutil.copytree(full_report[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (folder / name).write_text(content)
    code, _, err = _report(["--results", folder, "--out", out], capsys)
    assert code == 2
    assert err.count("\n") == 1 and f"velcro: error: {folder / name}" in err
    assert message in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_inconsistent_velcro_files_are_an_error(results, tmp_path, capsys):
    folder = _copy(results, tmp_path / "results", ["velcro_curves.json", "velcro_table.json"])
    table = json.loads((folder / "velcro_table.json").read_text())
    (folder / "velcro_table.json").write_text(json.dumps(
        [r for r in table if (r["task"], r["criterion"]) != ("tiny-a", "relative")]))
    code, _, err = _report(["--results", folder, "--out", tmp_path / "report"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert (f"{folder / 'velcro_table.json'}: no record of task 'tiny-a' with criterion "
            f"'relative', whose curve {folder / 'velcro_curves.json'} holds") in err


def test_vq_points_the_plot_cannot_draw_are_an_error(results, tmp_path, capsys):
    folder = _copy(results, tmp_path / "results", ["vq_sweep.json"])
    sweep = json.loads((folder / "vq_sweep.json").read_text())
    sweep["points"][0] = {**sweep["points"][0], "method": "lsh"}
    (folder / "vq_sweep.json").write_text(json.dumps(sweep))
    code, _, err = _report(["--results", folder, "--out", tmp_path / "report"], capsys)
    assert code == 2
    assert "vq_sweep.json: points[0].method must be one of bin, km, pq, rq, svd, not 'lsh'" in err


def test_a_named_file_must_exist(tmp_path, capsys):
    code, _, err = _report(["--out", tmp_path / "report", "--bench-hw", tmp_path / "no.json"],
                           capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"--bench-hw {tmp_path / 'no.json'}: no such file" in err
    assert not (tmp_path / "report").exists()


PROBE = """<script>
window.addEventListener("load", () => {
  const boxes = [...document.querySelectorAll("figure.plot")].map(figure => {
    const img = figure.querySelector("img"), r = img.getBoundingClientRect();
    return {id: figure.id, x: r.left + scrollX, y: r.top + scrollY, width: r.width,
            height: r.height, loaded: img.complete && img.naturalWidth > 0};
  });
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({height: document.documentElement.scrollHeight, boxes});
  document.body.appendChild(probe);
});
</script>"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("headless Chromium is needed to check the report page: "
                    "apt-get install chromium")
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--force-device-scale-factor=1", *args],
                          capture_output=True, text=True, timeout=120, check=True)


def test_the_page_renders_in_chromium_with_every_plot_visible(full_report, tmp_path):
    """Chromium loads the page with a probe script that reports where each plot image
    sits, and screenshots it; every plot's region of the screenshot must show a loaded,
    non-blank image."""
    out = tmp_path / "report"
    shutil.copytree(full_report[0], out)
    page = (out / "index.html").read_text()
    (out / "probe.html").write_text(page.replace("</body>", PROBE + "</body>"))
    shot = tmp_path / "page.png"
    width, height = 1200, 6000
    dom = _chromium(f"--window-size={width},{height}", "--dump-dom", f"--screenshot={shot}",
                    (out / "probe.html").as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    assert found, "the probe script did not run"
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["height"] <= height, "the page is taller than the screenshot"
    boxes = {box["id"].removeprefix("plot-"): box for box in probe["boxes"]}
    assert set(boxes) == ALL_PLOTS

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (height, width)
    for key, box in boxes.items():
        assert box["loaded"], f"plot {key} did not load"
        assert box["width"] > 500 and box["height"] > 150, f"plot {key} is too small: {box}"
        x, y = round(box["x"]), round(box["y"])
        region = pixels[y:y + round(box["height"]), x:x + round(box["width"])]
        assert _non_blank(region), f"plot {key} is blank in the screenshot"
    # The page outside the plots is mostly the white background: the check can fail.
    assert not _non_blank(pixels[:, :30])
