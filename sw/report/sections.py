"""The sections of the report: what each shows of its inputs, as text, tables and a plot.

:func:`build_sections` reads the inputs that :mod:`.inputs` finds and makes every
section of :data:`SECTIONS`. A section whose input is absent is not measured and names
the command that measures it; the others are filled by their builder (``*_section``)
from the files or records of their inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ReportError
from ..vq import METHODS
from .inputs import INPUTS, RECORDS, check_vq_points, demo_results, read_input, scan
from .plots import PLOT_FILES, plot_accuracy_vs_C, plot_conv_cycles, plot_resources, plot_sweep


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

    def set_plot(self, alt: str, draw: Callable, *records) -> None:
        """Give the section the plot ``draw(*records, path)``, drawn into the section's PNG
        of :data:`~velcro.sw.report.plots.PLOT_FILES`."""
        self.plot = Plot(PLOT_FILES[self.key], alt, lambda path: draw(*records, path))


def _pct(fraction: float, digits: int = 2) -> str:
    return f"{100 * fraction:.{digits}f}"


def velcro_section(section: Section, curves_path: Path, table_path: Path) -> None:
    """Accuracy versus C per task, and every search result (``velcro demo``)."""
    curves, table = read_input(curves_path, "velcro_curves"), read_input(table_path,
                                                                          "velcro_table")
    tasks = demo_results(table, curves)
    for result in tasks:
        for criterion in result["curves"]:
            if not any(r["criterion"] == criterion for r in result["records"]):
                raise ReportError(f"{table_path}: no record of task {result['task']!r} with "
                                  f"criterion {criterion!r}, whose curve {curves_path} holds")
    section.text = [
        "Validation top-1 accuracy versus the compression-saving ratio C (the share of conv "
        "activation elements replaced by their means, whose convolutions are skipped), per "
        "task and locality criterion. Stars: the thresholds chosen by the search (no loss "
        "on the search split); dashed: one threshold shared by all layers."]
    section.set_plot("validation accuracy versus C per task", plot_accuracy_vs_C, tasks)
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


def _vq_params(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items()) or "—"


def vq_section(section: Section, path: Path) -> None:
    """Accuracy versus compression rate per VQ method (``velcro vq --sweep``)."""
    sweep = read_input(path, "vq_sweep")
    points, baseline = sweep["points"], sweep["baseline_accuracy"]
    check_vq_points(path, points)
    layers = ", ".join(sweep.get("layers", [])) or "the dense layers"
    section.text = [f"Top-1 accuracy with {layers} vector-quantized, versus the compression "
                    "rate of the dense layers' weights (codebooks included); float32 "
                    f"accuracy {_pct(baseline)}\u00a0%."]
    if "counted" in sweep:
        section.text.append(f"Counted: {sweep['counted']}.")
    if "selection" in sweep:
        section.text.append(f"Configurations meeting a target are {sweep['selection']}.")
    section.set_plot("accuracy versus compression rate per VQ method", plot_sweep, points, baseline)
    rows: dict[tuple, dict] = {}
    for p in points:
        key = (p["method"], json.dumps(p["params"], sort_keys=True))
        row = rows.setdefault(key, {"point": p, "plain": None, "tuned": None})
        row["tuned" if p["finetune_epochs"] > 0 else "plain"] = p
    epochs = sorted({p["finetune_epochs"] for p in points if p["finetune_epochs"] > 0})
    tuned = bool(epochs)
    held = all("heldout_accuracy" in p for p in points)
    header = ["method", "parameters", "compression rate (×)", "accuracy plain (%)"]
    if held:
        header.append("held-out plain (%)")
    if tuned:
        header.append(f"accuracy fine-tuned {'/'.join(map(str, epochs))} epoch(s) (%)")
        if held:
            header.append("held-out fine-tuned (%)")
    cells = []
    for row in sorted(rows.values(), key=lambda r: (METHODS.index(r["point"]["method"]),
                                                     r["point"]["compression_rate"])):
        p = row["point"]
        line = [p["method"], _vq_params(p["params"]), f"{p['compression_rate']:.2f}",
                _pct(row["plain"]["accuracy"]) if row["plain"] else "—"]
        if held:
            line.append(_pct(row["plain"]["heldout_accuracy"]) if row["plain"] else "—")
        if tuned:
            line.append(_pct(row["tuned"]["accuracy"]) if row["tuned"] else "—")
            if held:
                line.append(_pct(row["tuned"]["heldout_accuracy"]) if row["tuned"] else "—")
        cells.append(line)
    section.tables = [Table("Every configuration of the sweep", header, cells, text_columns=2)]


def deepcompress_section(section: Section, path: Path) -> None:
    """Accuracy and storage per Deep Compression stage (``velcro deepcompress``)."""
    models = read_input(path, "deep_compression")["models"]
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


def cycles_section(section: Section, layers: dict) -> None:
    """Conv-array cycles per layer with and without VELCRO (``velcro bench hw``)."""
    section.text = [
        "Cycles of each conv layer of the reference CNN on the conv array (RTL simulation, "
        "checked against the golden model), without and with VELCRO skip masks. Realised "
        "saving: 1 − cycles with VELCRO / cycles; C: the share of output elements the "
        "masks skip."]
    section.set_plot("cycles per conv layer with and without VELCRO", plot_conv_cycles, layers)
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


def resources_section(section: Section, estimate: dict) -> None:
    """Resources used against the U280's capacity (``velcro build estimate``)."""
    resources = {name: {**r, "percent": r.get("percent", 100 * r["used"] / r["available"])}
                 for name, r in estimate["resources"].items()}
    fits = estimate.get("conv_arrays_that_fit")
    section.text = ["Resources of the kernel in the open-source estimate, against the "
                    "capacity of the Alveo U280's FPGA."]
    if fits is not None:
        section.text.append(f"Copies of the conv array that would fit: {fits}.")
    section.set_plot("resources used against U280 capacity", plot_resources, resources)
    section.tables = [Table("Resources used", ["resource", "used", "available", "used (%)"],
                            [[name, f"{r['used']:,}", f"{r['available']:,}",
                              f"{r['percent']:.2f}"] for name, r in resources.items()])]


#: Units of figures by the end of their name, first match wins.
UNITS = (("_cycles_per_s", "cycles/s"), ("_images_per_s", "images/s"), ("_seconds", "s"),
         ("_s", "s"), ("_cycles", "cycles"), ("_index_bound", "cycles"),
         ("_over_bound", "× bound"), ("_utilization", "of peak"), ("_lanes", "lanes"))


#: Column names of the figures of :func:`velcro.sw.build.yosys.synthesize`.
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


def figures_section(section: Section, bench: dict) -> None:
    """Every other scalar figure of the bench files, and Yosys resources per engine (no
    table, and so not measured, when there are none)."""
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
        section.text = ["The other figures of the hardware benchmark, as measured."]


def compress_section(section: Section, records: list[tuple[Path, dict]]) -> None:
    """Every ``velcro compress --json`` record of the results folder."""
    section.text = ["Your VELCRO plans (velcro compress): thresholds from --thresholds or the "
                    "search, C and accuracy measured on the task's validation split."]
    rows = [[path.name, r["task"], r["criterion"], ", ".join(f"{t:g}" for t in r["thresholds"]),
             _pct(r["C"]), _pct(r["accuracy"]), _pct(r["baseline_accuracy"]),
             f"{100 * (r['accuracy'] - r['baseline_accuracy']):+.2f}", str(r["n_validation"])]
            for path, r in records]
    section.tables = [Table("velcro compress records",
                            ["file", "task", "criterion", "thresholds T_k", "C (%)",
                             "accuracy (%)", "uncompressed (%)", "change (points)",
                             "validation images"], rows, text_columns=4)]


def runs_section(section: Section, records: list[tuple[Path, dict]]) -> None:
    """Every ``velcro run --json`` record of the results folder."""
    section.text = ["Packages run on a device (velcro run): integer accuracy, the float model "
                    "with the same compression where --weights was given, the share of MACs "
                    "VELCRO skipped, and the predictions' sha256 (equal across devices for "
                    "the same images)."]
    rows = []
    for path, r in records:
        skipped = r["macs_skipped"] / max(r["macs"] + r["macs_skipped"], 1)
        rows.append([path.name, Path(r["package"]).name, r["device"], r["task"],
                     str(r["images"]), _pct(r["accuracy"]),
                     _pct(r["float_accuracy"]) if "float_accuracy" in r else "—",
                     _pct(skipped, 1), _figure(r["images_per_second"]),
                     f"{r['cycles']['per_image']:,.0f}" if "cycles" in r else "—",
                     r["predictions_sha256"][:12]])
    section.tables = [Table("velcro run records",
                            ["file", "package", "device", "task", "images", "accuracy (%)",
                             "float accuracy (%)", "MACs skipped (%)", "images/s",
                             "cycles/image", "predictions sha256"], rows, text_columns=4)]


#: The sections in report order: key -> (title, the input whose writer measures it).
SECTIONS = {
    "velcro": ("Accuracy versus C per task (VELCRO)", "velcro_curves"),
    "vq": ("Accuracy versus compression rate per VQ method", "vq_sweep"),
    "deepcompress": ("Deep Compression", "deep_compression"),
    "cycles": ("Cycles per conv layer with and without VELCRO", "bench_hw"),
    "resources": ("Resources against U280 capacity", "estimate"),
    "figures": ("Other hardware figures", "bench_hw"),
    "compress": ("Your compressions (velcro compress)", "compress"),
    "runs": ("Package runs (velcro run)", "run"),
}


def _section(key: str, results: Path, sources: list[Path | None], build: Callable,
             *records) -> Section:
    """Section ``key``, filled by ``build(section, *records)`` when all its ``sources`` are
    present; it is measured if it then has a table."""
    title, writer = SECTIONS[key]
    command = (RECORDS[writer][2].format(dir=results) if writer in RECORDS
               else INPUTS[writer].command(results))
    section = Section(key, title, command)
    if sources and None not in sources:
        build(section, *records)
        if section.tables:
            section.sources = list(sources)
    return section


def build_sections(found: dict[str, Path | None], results: Path) -> list[Section]:
    """Read every input in ``found`` (see :func:`locate`) and the records that
    :func:`~velcro.sw.report.inputs.scan` finds in ``results``, and build the sections."""
    records = scan(results, set(found.values()))
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
    demo = [found["velcro_curves"], found["velcro_table"]]
    return [
        _section("velcro", results, demo, velcro_section, *demo),
        _section("vq", results, [found["vq_sweep"]], vq_section, found["vq_sweep"]),
        _section("deepcompress", results, [found["deep_compression"]], deepcompress_section,
                 found["deep_compression"]),
        _section("cycles", results, [origin.get("conv_cycles_reference")], cycles_section,
                 cycles),
        _section("resources", results, [estimate_source], resources_section, estimate),
        _section("figures", results, sources, figures_section, bench),
        _section("compress", results, [p for p, _ in records["compress"]], compress_section,
                 records["compress"]),
        _section("runs", results, [p for p, _ in records["run"]], runs_section, records["run"]),
    ]
