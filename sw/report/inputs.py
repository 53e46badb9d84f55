"""The result files the report reads: where they are, and the shape each must have.

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

Besides these, every other ``*.json`` file of the results folder that is a record of
``velcro compress --json`` or ``velcro run --json`` (:data:`RECORDS`, recognised by
its keys) is gathered into the sections of your own compressions and package runs.
Every input is read and checked against the shape its writer gives it before anything
is written; a file that is not valid JSON of that shape stops the report with a
:class:`~velcro.sw.errors.ReportError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ReportError
from ..vq import AXES, METHODS


@dataclass(frozen=True)
class Input:
    """A result file the report reads: its default name, the command that writes it and
    that command's output option (``{dir}``: the results folder, ``{path}``: the file)."""

    name: str
    writer: str
    output: str
    note: str = ""

    def command(self, results: Path) -> str:
        """The command that writes this file into the results folder ``results``."""
        return f"{self.writer} " + self.output.format(dir=results, path=Path(results) / self.name)


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
                 "heldout_baseline_accuracy?": NUMBER, "selection?": STRING,
                 "points": [{"method": STRING, "params": {}, "finetune_epochs": INTEGER,
                             "compression_rate": NUMBER, "accuracy": NUMBER,
                             "heldout_accuracy?": NUMBER}]},
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
#: Records of single commands, gathered from the results folder by :func:`scan`: kind ->
#: (the keys that mark a file as one, its shape, the command that writes it).
RECORDS = {
    "compress": ({"criterion", "thresholds", "n_preprocessing", "n_validation"},
                 {"task": STRING, "criterion": STRING, "thresholds": [NUMBER], "C": NUMBER,
                  "baseline_accuracy": NUMBER, "accuracy": NUMBER, "n_validation": INTEGER},
                 "velcro compress --task footwear --search --json {dir}/compress_footwear.json"),
    "run": ({"predictions_sha256", "device", "package"},
            {"package": STRING, "device": STRING, "task": STRING, "C": NUMBER,
             "images": POSITIVE, "accuracy": NUMBER, "macs": INTEGER, "macs_skipped": INTEGER,
             "images_per_second": NUMBER, "predictions_sha256": STRING,
             "float_accuracy?": NUMBER, "cycles?": {"per_image": NUMBER}},
            "velcro run --package footwear.velcro --json {dir}/run_golden.json"),
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



def scan(results: Path, taken: set[Path]) -> dict[str, list[tuple[Path, dict]]]:
    """The records of :data:`RECORDS` among the ``*.json`` files of ``results`` that are
    not inputs already (``taken``), by kind, in file-name order. A file of other JSON (or
    none) is not a record and is passed over; a file marked as a record by its keys but
    not of the record's shape stops the report naming it."""
    found: dict[str, list[tuple[Path, dict]]] = {kind: [] for kind in RECORDS}
    folder = Path(results)
    if not folder.is_dir():
        return found
    taken = {Path(p).resolve() for p in taken if p is not None}
    for path in sorted(folder.glob("*.json")):
        if path.resolve() in taken or not path.is_file():
            continue
        try:
            value = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(value, dict):
            continue
        for kind, (marks, shape, writer) in RECORDS.items():
            if marks <= value.keys():
                try:
                    _check(value, shape)
                except _Mismatch as e:
                    raise ReportError(f"{path}: {e}; expected what `{writer.split(' --')[0]}"
                                      " --json` writes") from None
                found[kind].append((path, value))
                break
    return found


def demo_results(table: list[dict], curves: list[dict]) -> list[dict]:
    """The :func:`~velcro.sw.locality.experiment.demo_task` results, in task order, from the
    two files of :func:`~velcro.sw.locality.experiment.demo_files` (``velcro demo``)."""
    return [{**task, "records": [r for r in table if r["task"] == task["task"]]}
            for task in curves]


def check_vq_points(path: Path, points: list[dict]) -> None:
    """What :func:`velcro.sw.report.plots.plot_sweep` needs of the points of ``path`` (a
    ``vq_sweep`` input) beyond their common shape."""
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
