"""Shared fixtures of the report tests: a results folder with every input, its report,
and helpers that run ``velcro report`` and read the tables of a page.

The VELCRO, VQ and Deep Compression inputs come from the real producers
(:func:`velcro.sw.locality.experiment.demo_task`, :func:`velcro.sw.vq.sweep.sweep`,
:func:`velcro.sw.vq.deepcompress.deep_compress`) run on a tiny model and random images;
the hardware figures are fixtures in the shape their writers give them.
"""

import contextlib
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from velcro.sw.cli import main
from velcro.sw.commands.vq import COUNTED
from velcro.sw.data import Dataset, Task
from velcro.sw.locality.experiment import demo_files, demo_task
from velcro.sw.vq import finetune, sweep
from velcro.sw.vq.deepcompress import LayerSetting, Schedule, deep_compress
from velcro.sw.vq.methods import quantize_layers

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


@pytest.fixture(scope="session")
def bench_hw() -> dict:
    """A ``bench_hw.json`` record (read only)."""
    return BENCH_HW


@pytest.fixture(scope="session")
def estimate() -> dict:
    """An ``estimate.json`` record (read only)."""
    return ESTIMATE


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
    head = finetune.DenseHead(model, images, labels)
    weights = finetune.dense_weights(model, ["5"])
    configs = sweep.sweep_configs(weights["5"].shape)[::6]
    points = sweep.sweep(head, weights, configs, progress=False)
    tuning = finetune.Tuning(finetune.DenseHead(model, images, labels), 1, seed=0)
    points += sweep.evaluate(head, quantize_layers(weights, "km", {"k": 4}), "km", {"k": 4},
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
    # What a newcomer following the README writes: a compress and a run record.
    assert main(["compress", "--task", "bags", "--thresholds", "10,20,20,10", "--json",
                 str(folder / "compress_bags.json")]) == 0
    package = folder / "bags.velcro"
    assert main(["export", "--task", "bags", "--thresholds", "10,20,20,10", "--out",
                 str(package)]) == 0
    assert main(["run", "--package", str(package), "--images", "40", "--json",
                 str(folder / "run_golden.json")]) == 0
    (folder / "notes.json").write_text('{"not": "a record"}')
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




@pytest.fixture
def copy_results():
    """``copy_results(results, folder, names)``: a new ``folder`` holding copies of the
    named files of ``results``."""
    def copy(results: Path, folder: Path, names) -> Path:
        folder.mkdir()
        for name in names:
            shutil.copy(results / name, folder / name)
        return folder

    return copy


@pytest.fixture
def run_report(capsys):
    """``run_report(argv)``: the exit code, stdout and stderr of ``velcro report argv``."""
    def run(argv) -> tuple[int, str, str]:
        code = main(["report", *map(str, argv)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


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


@pytest.fixture
def page_tables():
    """``page_tables(out)``: the tables of the page in ``out`` by caption, after checking
    that the Markdown holds the same."""
    def tables(out: Path) -> dict[str, list[list[str]]]:
        page = _Tables((out / "index.html").read_text()).tables
        assert page == _markdown_tables((out / "report.md").read_text())
        return {t["caption"]: t["rows"] for t in page}

    return tables


@pytest.fixture
def find_row():
    """``find_row(rows, *first)``: the one row of ``rows`` that starts with the cells ``first``."""
    def find(rows: list[list[str]], *first: str) -> list[str]:
        matches = [r for r in rows if tuple(r[:len(first)]) == first]
        assert len(matches) == 1, f"one row starting {first} expected in {rows}"
        return matches[0]

    return find


@pytest.fixture
def non_blank():
    """``non_blank(pixels)``: more than 2 % of the pixels are not near-white, and they are
    not one flat colour."""
    def check(pixels: np.ndarray) -> bool:
        grey = pixels.astype(float).mean(axis=-1)
        return (grey < 240).mean() > 0.02 and grey.std() > 10

    return check
