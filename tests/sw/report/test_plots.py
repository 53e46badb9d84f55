"""The plots (:mod:`velcro.sw.report.plots`): each one draws a non-blank PNG of its
records, and the report loads neither torch nor faiss."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from velcro.sw.report.inputs import demo_results
from velcro.sw.report.plots import (
    plot_accuracy_vs_C,
    plot_conv_cycles,
    plot_resources,
    plot_sweep,
)

REPORT_MODULES = ("velcro.sw.report", "velcro.sw.report.inputs", "velcro.sw.report.sections",
                  "velcro.sw.report.plots", "velcro.sw.report.render",
                  "velcro.sw.commands.report")


def test_every_plot_draws_a_non_blank_png(results, bench_hw, estimate, tmp_path, non_blank):
    def read(name):
        return json.loads((results / name).read_text())

    tasks = demo_results(read("velcro_table.json"), read("velcro_curves.json"))
    sweep = read("vq_sweep.json")
    drawn = {
        "velcro.png": lambda path: plot_accuracy_vs_C(tasks, path),
        "vq.png": lambda path: plot_sweep(sweep["points"], sweep["baseline_accuracy"], path),
        "cycles.png": lambda path: plot_conv_cycles(bench_hw["conv_cycles_reference"], path),
        "resources.png": lambda path: plot_resources(estimate["resources"], path),
    }
    for name, draw in drawn.items():
        draw(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert non_blank(np.asarray(Image.open(tmp_path / name).convert("RGB")))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(drawn)


@pytest.mark.parametrize("module", REPORT_MODULES)
def test_the_report_imports_neither_torch_nor_faiss(module):
    code = (f"import sys, {module}; "
            "print(any(m.split('.')[0] in ('torch', 'faiss') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
