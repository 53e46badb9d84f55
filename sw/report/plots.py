"""Every plot: the report's, and those of ``velcro demo`` and ``velcro vq --sweep``.

Each function draws one figure from the records its section reads and saves it as a PNG
through :func:`velcro.sw.files.save_figure`. Matplotlib runs headless (the Agg backend).
"""

from __future__ import annotations

from pathlib import Path

from ..files import save_figure
from ..vq import AXES

#: The plots, by section; a report removes those of its folder that it did not draw. The
#: names differ from the PNGs that ``velcro demo`` and ``velcro vq --sweep`` write, so a
#: report written into their folder never replaces or removes those.
PLOT_FILES = {"velcro": "report_accuracy_vs_C.png", "vq": "report_vq_sweep.png",
              "cycles": "report_conv_cycles.png", "resources": "report_resources.png"}


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
    save_figure(fig, path, dpi=110)
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
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_accuracy_vs_C(results: list[dict], path) -> None:
    """One panel per task: validation accuracy versus C (the paper's Figure 2)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.8), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        for criterion, points in result["curves"].items():
            line, = ax.plot([100 * p["C"] for p in points], [100 * p["accuracy"] for p in points],
                            marker="o", ms=3, label=f"per-layer: {criterion}")
            rec = next(r for r in result["records"] if r["criterion"] == criterion)
            ax.plot([100 * rec["C"]], [100 * rec["accuracy"]], marker="*", ms=12,
                    color=line.get_color(), ls="none")
        uniform = result["uniform"]
        ax.plot([100 * p["C"] for p in uniform], [100 * p["accuracy"] for p in uniform],
                ls="--", marker="x", ms=4, color="gray", label="uniform T (variance)")
        ax.axhline(100 * result["baseline_accuracy"], color="black", lw=0.8, ls=":",
                   label="uncompressed")
        ax.set_title(f"{result['task']} (star: search result)")
        # Zoom on the region where the choice is made; the uniform curve leaves it.
        top = max(100 * p["accuracy"] for points in result["curves"].values() for p in points)
        base = 100 * result["baseline_accuracy"]
        ax.set_ylim(base - 6, max(top, base) + 0.5)
        ax.set_xlabel("compression-saving ratio C (%)")
        ax.set_ylabel("validation top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def series_name(record: dict) -> str:
    """Legend label: the method, and for PQ and RQ its k (one curve over s or t)."""
    p = record["params"]
    if record["method"] == "pq":
        return f"PQ k={p['k']}"
    if record["method"] == "rq":
        return f"RQ k={p['k']}"
    return {"bin": "binarization", "km": "KM", "svd": "SVD"}[record["method"]]


def _series_style(name: str) -> dict:
    """One look per series: PQ curves solid and coloured by k, the others fixed."""
    fixed = {"binarization": dict(color="black", marker="*", ms=11, ls="none"),
             "KM": dict(color="tab:orange", marker="s", ls="--"),
             "SVD": dict(color="tab:blue", marker="D", ls="--")}
    if name in fixed:
        return fixed[name]
    k = int(name.split("=")[1])
    shade = {2: 0, 4: 1, 8: 2, 16: 3}.get(k, 3)
    if name.startswith("PQ"):
        return dict(color=("tab:green", "tab:red", "tab:purple", "tab:brown")[shade],
                    marker="o", ls="-")
    return dict(color=("0.75", "0.6", "0.45", "0.3")[shade], marker="x", ls=":")


def plot_sweep(records: list[dict], baseline: float, path: Path) -> None:
    """Accuracy versus compression rate like the paper's Figures 1-2.

    Columns: PQ segments along the inputs (x-axis) and along the outputs (y-axis);
    the other methods appear in both. Rows: the plain methods and, when the records
    hold them, the fine-tuned ones.
    """
    plt = _pyplot()
    tunings = sorted({r["finetune_epochs"] for r in records})
    fig, grid = plt.subplots(len(tunings), 2, figsize=(13, 4.8 * len(tunings)),
                             sharey=True, squeeze=False)
    lo = min(100 * r["accuracy"] for r in records)
    for row, epochs in zip(grid, tunings, strict=True):
        for axis, ax in zip(AXES, row, strict=True):
            series: dict[str, list[dict]] = {}
            for r in records:
                if r["finetune_epochs"] == epochs and (r["method"] != "pq"
                                                       or r["params"]["axis"] == axis):
                    series.setdefault(series_name(r), []).append(r)
            for name, points in series.items():
                points.sort(key=lambda r: r["compression_rate"])
                style = {"ms": 4, **_series_style(name)}
                ax.plot([r["compression_rate"] for r in points],
                        [100 * r["accuracy"] for r in points], label=name, **style)
            ax.axhline(100 * baseline, color="k", lw=0.8, ls=":", label="float32")
            ax.set_xscale("log", base=2)
            ax.set_ylim(max(lo - 1, 100 * baseline - 12), 100 * baseline + 1)
            ax.set_xlabel("compression rate of the dense layers (codebooks included)")
            where = "inputs (x-axis)" if axis == "x" else "outputs (y-axis)"
            how = f"fine-tuned {epochs} epoch(s)" if epochs else "plain"
            ax.set_title(f"PQ segments along the {where}; {how}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
        row[0].set_ylabel("top-1 accuracy (%)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_table1(records: list[dict], path) -> None:
    """One panel per network: validation accuracy minus the uncompressed model's, versus
    C, one curve per task (the paper's Figure 2), the search's choice starred and the
    paper's mean C for the network dashed."""
    plt = _pyplot()
    networks = list(dict.fromkeys(r["network"] for r in records))
    fig, axes = plt.subplots(1, len(networks), figsize=(4.5 * len(networks), 3.8),
                             squeeze=False)
    for ax, network in zip(axes[0], networks, strict=True):
        tops = []
        for rec in (r for r in records if r["network"] == network):
            base = 100 * rec["baseline_accuracy"]
            points = rec.get("curve") or [{"C": rec["C"], "accuracy": rec["accuracy"]}]
            tops.append(max(100 * p["accuracy"] - base for p in points))
            line, = ax.plot([100 * p["C"] for p in points],
                            [100 * p["accuracy"] - base for p in points],
                            marker="o", ms=3, label=rec["task"])
            ax.plot([100 * rec["C"]], [100 * rec["accuracy"] - base], marker="*", ms=12,
                    color=line.get_color(), ls="none")
        paper = next(r["paper_C"] for r in records if r["network"] == network)
        if paper is not None:
            ax.axvline(100 * paper, color="gray", ls="--", lw=1, label="paper, mean C")
        ax.axhline(0, color="black", lw=0.8, ls=":")
        ax.set_title(f"{network} (star: search's choice)")
        ax.set_xlabel("compression-saving ratio C (%)")
        ax.set_ylabel("validation accuracy change (points)")
        # Zoom on the region where the choice is made; steep falls leave it.
        ax.set_ylim(-3, max([1.0, *tops]) + 0.3)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
