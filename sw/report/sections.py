"""The results report: an HTML page and a Markdown file over the JSON files that the
other commands write (``velcro report``).

=============  ================================================  ==========================
section        read from                                         written by
=============  ================================================  ==========================
velcro         ``velcro_curves.json`` and ``velcro_table.json``  ``velcro demo``
vq             ``vq_sweep.json``                                 ``velcro vq --sweep``
deepcompress   ``deep_compression.json``                         ``velcro deepcompress``
cycles         ``conv_cycles_reference`` of ``bench_hw.json``    ``velcro bench hw --json``
resources      ``resources`` of ``estimate.json``                ``velcro build estimate``
figures        the other figures of ``bench_hw.json``            ``velcro bench hw --json``
=============  ================================================  ==========================

A combined ``bench.json`` (``velcro bench --json``) may hold any of the keys of
``bench_hw.json`` and ``estimate.json``; the dedicated file wins where both have a key.
A section whose input is absent is rendered as a "not measured" note naming the
command that measures it. Every input is read and checked against the shape its writer
gives it before anything is written; a file that is not valid JSON of that shape stops
the report with a :class:`~velcro.sw.errors.ReportError` naming the file.

The output folder holds ``index.html``, ``report.md`` and one PNG per plot. Both pages
refer to the PNGs by relative path rather than inlining them as base64, so Markdown
viewers show the same plots and the folder stays self-contained when moved as a whole.
Every file is first written into a staging folder inside the output folder and then
renamed into place, the HTML page last, so a failing run leaves an earlier report intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import ReportError


@dataclass(frozen=True)
class Input:
    """A result file the report reads: its default name, the command that writes it and
    that command's output option (``{dir}``: the results folder, ``{path}``: the file)."""

    name: str
    writer: str
    output: str
    note: str = ""


INPUTS = {
    "velcro_curves": Input("velcro_curves.json", "velcro demo", "--out {dir}"),
    "velcro_table": Input("velcro_table.json", "velcro demo", "--out {dir}"),
    "vq_sweep": Input("vq_sweep.json", "velcro vq --sweep", "--out {dir}"),
    "deep_compression": Input("deep_compression.json", "velcro deepcompress", "--out {dir}"),
    "bench_hw": Input("bench_hw.json", "velcro bench hw", "--json {path}"),
    "estimate": Input("estimate.json", "velcro build estimate", "--json {path}"),
    "bench": Input("bench.json", "velcro bench", "--json {path}",
                   "; its keys stand in for those of bench_hw.json and estimate.json where "
                   "those files lack them"),
}

#: The plots, by section; a report removes those of its folder that it did not draw. The
#: names differ from the PNGs that ``velcro demo`` and ``velcro vq --sweep`` write, so a
#: report written into their folder never replaces or removes those.
PLOT_FILES = {"velcro": "report_accuracy_vs_C.png", "vq": "report_vq_sweep.png",
              "cycles": "report_conv_cycles.png", "resources": "report_resources.png"}

# --------------------------------------------------------------------------- input shapes
#
# A shape is a scalar kind (one of the strings below), ``[shape]`` (a non-empty list of
# items of that shape), a dict (an object with those keys; a key ending in "?" may be
# absent; other keys are allowed), :class:`MapOf` or ``None`` (anything).

NUMBER, INTEGER, POSITIVE, STRING = "a number", "an integer", "a positive integer", "a string"


@dataclass(frozen=True)
class MapOf:
    """A non-empty object with any keys, every value of shape ``value``."""

    value: object


_SCALARS = {
    NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    INTEGER: lambda v: isinstance(v, int) and not isinstance(v, bool),
    POSITIVE: lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    STRING: lambda v: isinstance(v, str),
}

POINT = {"C": NUMBER, "accuracy": NUMBER}
SHAPES = {
    "velcro_curves": [{"task": STRING, "baseline_accuracy": NUMBER, "curves": MapOf([POINT]),
                       "uniform": [POINT]}],
    "velcro_table": [{"task": STRING, "criterion": STRING, "thresholds": [NUMBER], "C": NUMBER,
                      "baseline_accuracy": NUMBER, "accuracy": NUMBER,
                      "max_C_no_loss?": NUMBER, "n_validation?": INTEGER}],
    "vq_sweep": {"baseline_accuracy": NUMBER, "layers?": [STRING], "counted?": STRING,
                 "points": [{"method": STRING, "params": {}, "finetune_epochs": INTEGER,
                             "compression_rate": NUMBER, "accuracy": NUMBER}]},
    "deep_compression": {"models": [{"model": STRING, "dataset?": STRING,
                                     "accuracy": MapOf(NUMBER), "storage_bits": MapOf(NUMBER),
                                     "compression": MapOf(NUMBER)}]},
    "bench_hw": {"conv_cycles_reference?": MapOf({"shape": STRING, "cycles": POSITIVE,
                                                  "cycles_velcro": INTEGER,
                                                  "skipped_fraction": NUMBER})},
    "estimate": {"resources": MapOf({"used": NUMBER, "available": POSITIVE,
                                     "percent?": NUMBER}),
                 "conv_arrays_that_fit?": INTEGER},
}
# The combined bench file may hold the keys of both.
SHAPES["bench"] = {**SHAPES["bench_hw"], "resources?": SHAPES["estimate"]["resources"],
                   "conv_arrays_that_fit?": INTEGER}


class _Mismatch(Exception):
    """Where a value differs from its shape; :func:`read_input` adds the file's name."""


def _describe(value) -> str:
    if isinstance(value, dict):
        return "an empty object" if not value else "an object"
    if isinstance(value, list):
        return "an empty list" if not value else f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check(value, shape, where: str = "") -> None:
    """Raise :class:`_Mismatch` naming the first place (``where``: a path such as
    ``points[3].params``, empty at the top level) at which ``value`` differs from ``shape``."""
    here = where or "the top level"
    if shape is None:
        return
    if isinstance(shape, str):
        if not _SCALARS[shape](value):
            raise _Mismatch(f"{here} must be {shape}, not {_describe(value)}")
    elif isinstance(shape, list):
        if not isinstance(value, list) or not value:
            raise _Mismatch(f"{here} must be a non-empty list, not {_describe(value)}")
        for i, item in enumerate(value):
            _check(item, shape[0], f"{where}[{i}]")
    else:
        kind = "a non-empty object" if isinstance(shape, MapOf) else "an object"
        if not isinstance(value, dict) or (isinstance(shape, MapOf) and not value):
            raise _Mismatch(f"{here} must be {kind}, not {_describe(value)}")
        prefix = f"{where}." if where else ""
        if isinstance(shape, MapOf):
            for key, item in value.items():
                _check(item, shape.value, prefix + key)
            return
        for key, item_shape in shape.items():
            name = key.removesuffix("?")
            if name in value:
                _check(value[name], item_shape, prefix + name)
            elif not key.endswith("?"):
                raise _Mismatch(f"{here} has no {name!r} key")


def read_input(path: Path, key: str):
    """Read the result file ``path`` of kind ``key`` (of :data:`INPUTS`), checking its shape."""
    try:
        value = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column "
                          f"{e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})"
                          ) from None
    try:
        _check(value, SHAPES.get(key))
    except _Mismatch as e:
        raise ReportError(f"{path}: {e}; expected what `{INPUTS[key].writer}` writes"
                          ) from None
    return value


def locate(results: Path, given: dict[str, Path | None]) -> dict[str, Path | None]:
    """The file of every input: ``given[key]`` (which must exist), else its default name in
    ``results`` when that exists, else None."""
    found = {}
    for key, spec in INPUTS.items():
        path = given.get(key)
        if path is not None:
            if not Path(path).is_file():
                raise ReportError(f"--{key.replace('_', '-')} {path}: no such file")
            found[key] = Path(path)
        else:
            default = Path(results) / spec.name
            found[key] = default if default.is_file() else None
    return found


# --------------------------------------------------------------------------- sections

@dataclass
class Table:
    """A table as formatted cells; the first ``text_columns`` columns are left-aligned
    text, the others numbers (right-aligned)."""

    caption: str
    header: list[str]
    rows: list[list[str]]
    text_columns: int = 1


@dataclass
class Plot:
    """A plot: its PNG's name in the output folder and the function that draws it there."""

    file: str
    alt: str
    draw: Callable[[Path], None]


@dataclass
class Section:
    """One section of the report; ``sources`` empty means not measured."""

    key: str
    title: str
    command: str
    sources: list[Path] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    plot: Plot | None = None
    tables: list[Table] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return bool(self.sources)


def _pct(fraction: float, digits: int = 2) -> str:
    return f"{100 * fraction:.{digits}f}"


def _command(key: str, results: Path) -> str:
    spec = INPUTS[key]
    return f"{spec.writer} " + spec.output.format(dir=results, path=Path(results) / spec.name)


def velcro_section(curves_path: Path | None, table_path: Path | None, results: Path) -> Section:
    """Accuracy versus C per task, and every search result (``velcro demo``)."""
    section = Section("velcro", "Accuracy versus C per task (VELCRO)",
                      _command("velcro_curves", results))
    if curves_path is None or table_path is None:
        return section
    from .study import demo_results, plot_accuracy_vs_C

    curves, table = read_input(curves_path, "velcro_curves"), read_input(table_path,
                                                                          "velcro_table")
    tasks = demo_results(table, curves)
    for result in tasks:
        for criterion in result["curves"]:
            if not any(r["criterion"] == criterion for r in result["records"]):
                raise ReportError(f"{table_path}: no record of task {result['task']!r} with "
                                  f"criterion {criterion!r}, whose curve {curves_path} holds")
    section.sources = [curves_path, table_path]
    section.text = [
        "Validation top-1 accuracy versus the compression-saving ratio C (the share of conv "
        "activation elements replaced by their means, whose convolutions are skipped), per "
        "task and locality criterion. Stars: the thresholds chosen by the search (no loss "
        "on the search split); dashed: one threshold shared by all layers."]
    section.plot = Plot(PLOT_FILES["velcro"], "validation accuracy versus C per task",
                        lambda path: plot_accuracy_vs_C(tasks, path))
    rows = []
    for result in tasks:
        for r in result["records"]:
            rows.append([
                r["task"], r["criterion"], str(r.get("n_validation", "—")),
                _pct(r["baseline_accuracy"]), ", ".join(f"{t:g}" for t in r["thresholds"]),
                _pct(r["C"]), _pct(r["accuracy"]),
                f"{100 * (r['accuracy'] - r['baseline_accuracy']):+.2f}",
                _pct(r["max_C_no_loss"], 1) if "max_C_no_loss" in r else "—"])
    section.tables = [Table(
        "Search results per task and criterion (the last column is the paper's Table 1 "
        "measure: the largest C on the traced curve with no validation loss)",
        ["task", "criterion", "validation images", "uncompressed accuracy (%)",
         "thresholds T_k (percentile)", "C (%)", "accuracy (%)", "change (points)",
         "largest C without loss (%)"], rows, text_columns=2)]
    return section


def _vq_params(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items()) or "—"


def _check_vq_points(path: Path, points: list[dict]) -> None:
    """What :func:`velcro.sw.vq.plot_sweep` needs beyond the common shape."""
    from .vq import AXES, METHODS

    for i, p in enumerate(points):
        where = f"{path}: points[{i}]"
        if p["method"] not in METHODS:
            raise ReportError(f"{where}.method must be one of {', '.join(METHODS)}, "
                              f"not {p['method']!r}")
        if p["method"] in ("pq", "rq") and not _SCALARS[POSITIVE](p["params"].get("k")):
            raise ReportError(f"{where}.params.k must be a positive integer for "
                              f"{p['method']}, not {p['params'].get('k')!r}")
        if p["method"] == "pq" and p["params"].get("axis") not in AXES:
            raise ReportError(f"{where}.params.axis must be x or y for pq, "
                              f"not {p['params'].get('axis')!r}")


def vq_section(path: Path | None, results: Path) -> Section:
    """Accuracy versus compression rate per VQ method (``velcro vq --sweep``)."""
    section = Section("vq", "Accuracy versus compression rate per VQ method",
                      _command("vq_sweep", results))
    if path is None:
        return section
    from .vq import METHODS, plot_sweep

    sweep = read_input(path, "vq_sweep")
    points, baseline = sweep["points"], sweep["baseline_accuracy"]
    _check_vq_points(path, points)
    section.sources = [path]
    layers = ", ".join(sweep.get("layers", [])) or "the dense layers"
    section.text = [f"Top-1 accuracy with {layers} vector-quantized, versus the compression "
                    "rate of the dense layers' weights (codebooks included); float32 "
                    f"accuracy {_pct(baseline)}\u00a0%."]
    if "counted" in sweep:
        section.text.append(f"Counted: {sweep['counted']}.")
    section.plot = Plot(PLOT_FILES["vq"], "accuracy versus compression rate per VQ method",
                        lambda out: plot_sweep(points, baseline, out))
    rows: dict[tuple, dict] = {}
    for p in points:
        key = (p["method"], json.dumps(p["params"], sort_keys=True))
        row = rows.setdefault(key, {"point": p, "plain": None, "tuned": None})
        row["tuned" if p["finetune_epochs"] > 0 else "plain"] = p
    epochs = sorted({p["finetune_epochs"] for p in points if p["finetune_epochs"] > 0})
    tuned = bool(epochs)
    header = ["method", "parameters", "compression rate (×)", "accuracy plain (%)"]
    if tuned:
        header.append(f"accuracy fine-tuned {'/'.join(map(str, epochs))} epoch(s) (%)")
    cells = []
    for row in sorted(rows.values(), key=lambda r: (METHODS.index(r["point"]["method"]),
                                                     r["point"]["compression_rate"])):
        p = row["point"]
        line = [p["method"], _vq_params(p["params"]), f"{p['compression_rate']:.2f}",
                _pct(row["plain"]["accuracy"]) if row["plain"] else "—"]
        if tuned:
            line.append(_pct(row["tuned"]["accuracy"]) if row["tuned"] else "—")
        cells.append(line)
    section.tables = [Table("Every configuration of the sweep", header, cells, text_columns=2)]
    return section


def deepcompress_section(path: Path | None, results: Path) -> Section:
    """Accuracy and storage per Deep Compression stage (``velcro deepcompress``)."""
    section = Section("deepcompress", "Deep Compression", _command("deep_compression", results))
    if path is None:
        return section
    models = read_input(path, "deep_compression")["models"]
    section.sources = [path]
    dataset = models[0].get("dataset")
    section.text = ["Pruning, trained quantization and Huffman coding (Han et al. 2016): "
                    "top-1 accuracy and storage after each stage"
                    + (f", on {dataset}." if dataset else ".")]
    rows = []
    for m in models:
        for stage, acc in m["accuracy"].items():
            bits, rate = m["storage_bits"].get(stage), m["compression"].get(stage)
            rows.append([m["model"], stage, _pct(acc),
                         f"{bits / 8 / 1024:,.1f}" if bits is not None else "—",
                         f"{rate:.1f}" if rate is not None else "—"])
    section.tables = [Table("Accuracy and storage per stage",
                            ["model", "stage", "top-1 accuracy (%)", "storage (KiB)",
                             "compression (×)"], rows, text_columns=2)]
    return section


def cycles_section(layers: dict | None, source: Path | None, results: Path) -> Section:
    """Conv-array cycles per layer with and without VELCRO (``velcro bench hw``)."""
    section = Section("cycles", "Cycles per conv layer with and without VELCRO",
                      _command("bench_hw", results))
    if layers is None:
        return section
    section.sources = [source]
    section.text = [
        "Cycles of each conv layer of the reference CNN on the conv array (RTL simulation, "
        "checked against the golden model), without and with VELCRO skip masks. Realised "
        "saving: 1 − cycles with VELCRO / cycles; C: the share of output elements the "
        "masks skip."]
    section.plot = Plot(PLOT_FILES["cycles"], "cycles per conv layer with and without VELCRO",
                        lambda path: plot_conv_cycles(layers, path))
    rows = []
    for name, layer in layers.items():
        saving = 1 - layer["cycles_velcro"] / layer["cycles"]
        C = layer["skipped_fraction"]
        rows.append([name, layer["shape"], f"{layer['cycles']:,}", f"{layer['cycles_velcro']:,}",
                     _pct(saving, 1), _pct(C, 1), f"{saving / C:.2f}" if C > 0 else "—"])
    total = sum(layer["cycles"] for layer in layers.values())
    total_velcro = sum(layer["cycles_velcro"] for layer in layers.values())
    rows.append(["all layers", "", f"{total:,}", f"{total_velcro:,}",
                 _pct(1 - total_velcro / total, 1), "—", "—"])
    section.tables = [Table("Cycles per conv layer",
                            ["layer", "shape", "cycles", "cycles with VELCRO",
                             "realised saving (%)", "C (%)", "saving / C"], rows,
                            text_columns=2)]
    return section


def resources_section(estimate: dict | None, source: Path | None, results: Path) -> Section:
    """Resources used against the U280's capacity (``velcro build estimate``)."""
    section = Section("resources", "Resources against U280 capacity",
                      _command("estimate", results))
    if estimate is None:
        return section
    resources = {name: {**r, "percent": r.get("percent", 100 * r["used"] / r["available"])}
                 for name, r in estimate["resources"].items()}
    fits = estimate.get("conv_arrays_that_fit")
    section.sources = [source]
    section.text = ["Resources of the kernel in the open-source estimate, against the "
                    "capacity of the Alveo U280's FPGA."]
    if fits is not None:
        section.text.append(f"Copies of the conv array that would fit: {fits}.")
    section.plot = Plot(PLOT_FILES["resources"], "resources used against U280 capacity",
                        lambda path: plot_resources(resources, path))
    section.tables = [Table("Resources used", ["resource", "used", "available", "used (%)"],
                            [[name, f"{r['used']:,}", f"{r['available']:,}",
                              f"{r['percent']:.2f}"] for name, r in resources.items()])]
    return section


#: Units of figures by the end of their name, first match wins.
UNITS = (("_cycles_per_s", "cycles/s"), ("_images_per_s", "images/s"), ("_seconds", "s"),
         ("_s", "s"), ("_cycles", "cycles"), ("_index_bound", "cycles"),
         ("_over_bound", "× bound"), ("_utilization", "of peak"), ("_lanes", "lanes"))


#: Column names of the figures of :func:`velcro.hw.estimate.synthesize`.
YOSYS_NAMES = {"lut": "LUT", "ff": "FF", "dsp48e2": "DSP48E2", "bram36": "BRAM36",
               "lutram": "LUTRAM", "uram": "URAM", "carry": "CARRY",
               "yosys_seconds": "Yosys time (s)"}


def _unit(name: str) -> str:
    return next((unit for end, unit in UNITS if name.endswith(end)), "")


def _figure(value) -> str:
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def figures_section(bench: dict, sources: list[Path], results: Path) -> Section:
    """Every other scalar figure of the bench files, and Yosys resources per engine."""
    section = Section("figures", "Other hardware figures", _command("bench_hw", results))
    shown = {"conv_cycles_reference", "resources", "conv_arrays_that_fit"}
    scalars = [[name, _figure(value), _unit(name)] for name, value in bench.items()
               if name not in shown and isinstance(value, (int, float, str))]
    engines = {name.removeprefix("yosys_"): value for name, value in bench.items()
               if name.startswith("yosys_") and isinstance(value, dict)}
    if scalars:
        section.tables.append(Table("Measured figures", ["figure", "value", "unit"], scalars))
    if engines:
        keys = list(dict.fromkeys(k for figures in engines.values() for k in figures
                                  if isinstance(figures[k], (int, float))))
        section.tables.append(Table(
            "Yosys synth_xilinx -family xcup per engine",
            ["engine", *(YOSYS_NAMES.get(k, k) for k in keys)],
            [[name, *(_figure(figures[k]) if k in figures else "—" for k in keys)]
             for name, figures in engines.items()]))
    if section.tables:
        section.sources = sources
        section.text = ["The other figures of the hardware benchmark, as measured."]
    return section


def build_sections(found: dict[str, Path | None], results: Path) -> list[Section]:
    """Read every input in ``found`` (see :func:`locate`) and build the sections."""
    bench, origin = {}, {}
    for key in ("bench", "bench_hw"):       # bench_hw.json's keys win
        if found[key] is not None:
            record = read_input(found[key], key)
            bench.update(record)
            origin.update(dict.fromkeys(record, found[key]))
    estimate = estimate_source = None
    if found["estimate"] is not None:
        estimate, estimate_source = read_input(found["estimate"], "estimate"), found["estimate"]
    elif "resources" in bench:
        estimate, estimate_source = bench, origin["resources"]
    cycles = bench.get("conv_cycles_reference")
    sources = list(dict.fromkeys(found[k] for k in ("bench_hw", "bench") if found[k]))
    return [
        velcro_section(found["velcro_curves"], found["velcro_table"], results),
        vq_section(found["vq_sweep"], results),
        deepcompress_section(found["deep_compression"], results),
        cycles_section(cycles, origin.get("conv_cycles_reference"), results),
        resources_section(estimate, estimate_source, results),
        figures_section(bench, sources, results),
    ]


# --------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_conv_cycles(layers: dict, path) -> None:
    """Bars of cycles per conv layer without and with VELCRO, labelled with the realised
    saving and C."""
    from matplotlib.ticker import StrMethodFormatter

    plt = _pyplot()
    names = list(layers)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) + 2), 4.2))
    width = 0.38
    for offset, key, label, color in ((-width / 2, "cycles", "without VELCRO", "0.62"),
                                      (width / 2, "cycles_velcro", "with VELCRO", "tab:green")):
        ax.bar([i + offset for i in range(len(names))], [layers[n][key] for n in names],
               width, label=label, color=color)
    top = max(layers[n]["cycles"] for n in names)
    for i, name in enumerate(names):
        layer = layers[name]
        saving = 1 - layer["cycles_velcro"] / layer["cycles"]
        ax.annotate(f"−{100 * saving:.0f} % at C = {100 * layer['skipped_fraction']:.0f} %",
                    (i, max(layer["cycles"], layer["cycles_velcro"])), xytext=(0, 4),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(range(len(names)), [f"{n}\n{layers[n]['shape']}" for n in names], fontsize=8)
    ax.set_ylim(0, 1.15 * top)
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_ylabel("cycles")
    ax.set_title("conv array cycles per layer (RTL simulation)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_resources(resources: dict, path) -> None:
    """Horizontal bars of each resource's use, on a full bar of the device's capacity."""
    plt = _pyplot()
    names = list(resources)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) + 1.4))
    rows = range(len(names))
    ax.barh(rows, [100] * len(names), color="0.93", edgecolor="0.75", label="U280 capacity")
    ax.barh(rows, [resources[n]["percent"] for n in names], color="tab:blue", label="used")
    for i, name in enumerate(names):
        r = resources[name]
        ax.text(min(r["percent"], 100) + 1, i, f"{r['used']:,} of {r['available']:,} "
                f"({r['percent']:.2f} %)", va="center", fontsize=8)
    ax.set_yticks(rows, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the U280's capacity (%)")
    ax.set_title("resources used", loc="left")
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1, 1), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- rendering

def status_table(sections: list[Section]) -> Table:
    """What was rendered from which file, and what to run for the rest."""
    rows = [[s.title, "rendered", ", ".join(f"`{p}`" for p in s.sources)] if s.measured
            else [s.title, "not measured", f"run `{s.command}`"] for s in sections]
    return Table("Sections", ["section", "status", "source"], rows, text_columns=3)


CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232b;
       background: #f4f6f8; margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { margin: 0 0 4px; font-size: 28px; }
h2 { margin: 36px 0 8px; padding-top: 12px; border-top: 1px solid #dde2e8; font-size: 21px; }
p.meta { color: #5b6573; margin: 0 0 16px; }
figure { margin: 12px 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #e3e7ec; }
table { border-collapse: collapse; margin: 10px 0 18px; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e6e9ee; text-align: left;
         vertical-align: top; }
th { background: #eef1f5; }
td:not(:last-child) { white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
code { background: #eef1f5; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
p.missing { color: #7a4b00; background: #fff6e0; border-left: 4px solid #e0a100;
            padding: 8px 12px; }
"""


def _inline(parent: ET.Element, text: str) -> None:
    """Append ``text`` to ``parent``, its backquoted parts as ``<code>``."""
    parts = text.split("`")
    last = None
    for i, part in enumerate(parts):
        if i % 2:
            last = ET.SubElement(parent, "code")
            last.text = part
        elif last is None:
            parent.text = (parent.text or "") + part
        else:
            last.tail = part


def _html_table(parent: ET.Element, table: Table) -> None:
    el = ET.SubElement(parent, "table")
    ET.SubElement(el, "caption").text = table.caption
    row = ET.SubElement(ET.SubElement(el, "thead"), "tr")
    for i, name in enumerate(table.header):
        ET.SubElement(row, "th", {"class": "num"} if i >= table.text_columns else {}).text = name
    body = ET.SubElement(el, "tbody")
    for cells in table.rows:
        row = ET.SubElement(body, "tr")
        for i, cell in enumerate(cells):
            _inline(ET.SubElement(row, "td", {"class": "num"} if i >= table.text_columns
                                  else {}), cell)


def render_html(sections: list[Section], generated: str, results: Path) -> str:
    """The report page; plots are ``<figure class="plot" id="plot-<section>">``."""
    html = ET.Element("html", lang="en")
    head = ET.SubElement(html, "head")
    ET.SubElement(head, "meta", charset="utf-8")
    ET.SubElement(head, "title").text = "VELCRO report"
    ET.SubElement(head, "style").text = CSS
    main = ET.SubElement(ET.SubElement(html, "body"), "main")
    ET.SubElement(main, "h1").text = "VELCRO report"
    _inline(ET.SubElement(main, "p", {"class": "meta"}),
            f"Generated {generated} from the results in `{results}`.")
    _html_table(main, status_table(sections))
    for s in sections:
        box = ET.SubElement(main, "section", id=s.key)
        ET.SubElement(box, "h2").text = s.title
        if not s.measured:
            _inline(ET.SubElement(box, "p", {"class": "missing"}),
                    f"Not measured — run `{s.command}`.")
            continue
        for text in s.text:
            _inline(ET.SubElement(box, "p"), text)
        if s.plot is not None:
            figure = ET.SubElement(box, "figure", {"class": "plot", "id": f"plot-{s.key}"})
            ET.SubElement(figure, "img", src=s.plot.file, alt=s.plot.alt)
        for table in s.tables:
            _html_table(box, table)
    return "<!DOCTYPE html>\n" + ET.tostring(html, encoding="unicode", method="html") + "\n"


def _md_table(table: Table) -> list[str]:
    def row(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = ["---" if i < table.text_columns else "---:" for i in range(len(table.header))]
    return [f"**{table.caption}**", "", row(table.header), row(rule),
            *(row(cells) for cells in table.rows), ""]


def render_markdown(sections: list[Section], generated: str, results: Path) -> str:
    """The same content as :func:`render_html`, as Markdown."""
    lines = ["# VELCRO report", "", f"Generated {generated} from the results in `{results}`.",
             "", *_md_table(status_table(sections))]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if not s.measured:
            lines += [f"> Not measured — run `{s.command}`.", ""]
            continue
        for text in s.text:
            lines += [text, ""]
        if s.plot is not None:
            lines += [f"![{s.plot.alt}]({s.plot.file})", ""]
        for table in s.tables:
            lines += _md_table(table)
    return "\n".join(lines)


def write_report(sections: list[Section], out: Path, results: Path) -> list[Path]:
    """Draw the plots and write ``index.html`` and ``report.md`` into ``out``.

    Returns the files written, the page first. Everything is written into a staging
    folder inside ``out`` and renamed into place, the page last; plots of sections
    not measured this time are removed afterwards.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        plots = [s.plot for s in sections if s.measured and s.plot is not None]
        for plot in plots:
            plot.draw(stage / plot.file)
        (stage / "report.md").write_text(render_markdown(sections, generated, results))
        (stage / "index.html").write_text(render_html(sections, generated, results))
        names = [p.file for p in plots] + ["report.md", "index.html"]
        for name in names:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    drawn = {p.file for p in plots}
    for name in PLOT_FILES.values():
        if name not in drawn:
            (out / name).unlink(missing_ok=True)
    return [out / name for name in reversed(names)]


def report(results: Path, out: Path, given: dict[str, Path | None] | None = None
           ) -> tuple[list[Section], list[Path]]:
    """Build the report of the result files in ``results`` (or ``given``) into ``out``."""
    sections = build_sections(locate(results, given or {}), results)
    return sections, write_report(sections, out, results)
