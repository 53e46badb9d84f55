"""``velcro build estimate``: U280 shares, LUTs as memory, conv arrays that fit.

The arithmetic and the command are checked on hand-made cell histograms (Yosys itself
is tested in ``tests/hw/test_estimate.py``); a slow test synthesizes the shipped kernel
(the acceptance figure: under 10 % of every resource class of the U280).
"""

import gc
import json

import pytest

from velcro.hw.kernel import config as kernel_config
from velcro.sw.build import yosys as estimate_module
from velcro.sw.build.utilization import (
    U280,
    compute_units,
    conv_arrays_that_fit,
    cus_that_fit,
    lut_count,
    resources,
    table,
)
from velcro.sw.build.yosys import add_figures, parse_stat
from velcro.sw.cli import main

CLASSES = ["LUT", "FF", "DSP", "BRAM36", "URAM"]

STAT = """
=== velcro_kernel ===

     1000   LUT6
      300   LUT3
       10   RAM64M
        2   RAM32M16
        4   SRLC32E
     5000   FDRE
       16   FDSE
      152   DSP48E2
       20   RAMB36E2
        7   RAMB18E2
        3   URAM288
       80   CARRY4
"""


def figures(lut=0, ff=0, dsp=0, ramb36=0, ramb18=0, uram=0, ram64m=0) -> dict:
    """Figures of :func:`velcro.sw.build.yosys.synthesize` for a design of these cells."""
    cells = {"LUT6": lut, "FDRE": ff, "DSP48E2": dsp, "RAMB36E2": ramb36, "RAMB18E2": ramb18,
             "URAM288": uram, "RAM64M": ram64m}
    text = "".join(f"  {n}  {cell}\n" for cell, n in cells.items() if n)
    return parse_stat(text)


def test_luts_count_logic_and_memory_by_the_luts_each_primitive_occupies():
    cells = parse_stat(STAT)["cells"]
    assert lut_count(cells) == (1300, 10 * 4 + 2 * 8 + 4 * 1)
    with pytest.raises(ValueError, match="unknown LUT-memory primitive RAM64X9Q"):
        lut_count({"RAM64X9Q": 1})


def test_each_class_is_a_share_of_the_u280():
    shares = resources(parse_stat(STAT))
    assert list(shares) == CLASSES
    assert {name: row["available"] for name, row in shares.items()} == \
        {"LUT": 1_303_680, "FF": 2_607_360, "DSP": 9_024, "BRAM36": 2_016, "URAM": 960}
    used = {name: row["used"] for name, row in shares.items()}
    # LUT-RAM occupies LUTs; a RAMB18 is half a RAMB36.
    assert used == {"LUT": 1360, "FF": 5016, "DSP": 152, "BRAM36": 23.5, "URAM": 3}
    assert shares["DSP"]["percent"] == round(100 * 152 / 9024, 3) == 1.684
    assert shares["BRAM36"]["percent"] == round(100 * 23.5 / 2016, 3)


def test_conv_arrays_fit_beside_one_rest_of_the_kernel_limited_by_the_scarcest_class():
    conv = figures(lut=30_000, ff=40_000, dsp=160, ramb36=100)
    kernel = figures(lut=50_000, ff=60_000, dsp=176, ramb36=120, uram=4)
    # DSP: (9024 - 16) // 160 = 56; LUT: (1303680 - 20000) // 30000 = 42;
    # FF: (2607360 - 20000) // 40000 = 64; BRAM36: (2016 - 20) // 100 = 19.
    assert conv_arrays_that_fit(kernel, conv) == (19, "BRAM36")
    no_bram = figures(lut=30_000, ff=40_000, dsp=160)
    assert conv_arrays_that_fit(figures(lut=50_000, ff=60_000, dsp=176), no_bram) == (42, "LUT")
    # A kernel the device cannot hold even once fits no conv array.
    assert conv_arrays_that_fit(figures(dsp=20_000), figures(dsp=100)) == (0, "DSP")
    with pytest.raises(ValueError, match="uses none"):
        conv_arrays_that_fit(figures(ff=10), figures())


def test_table_lists_every_class_and_the_fit():
    report = {"resources": resources(parse_stat(STAT)),
              "conv_array": resources(figures(dsp=144, lut=900)),
              "conv_arrays_that_fit": 61, "conv_arrays_limited_by": "DSP"}
    lines = table(report).splitlines()
    assert [line.split()[0] for line in lines[1:6]] == CLASSES
    assert lines[3].split() == ["DSP", "152", "144", "9,024", "1.68%"]
    assert lines[-1] == "conv arrays that fit beside the rest of the kernel: 61 (limited by DSP)"


def check_report(report: dict) -> None:
    """The JSON shape of the issue, with percentages that follow from the counts."""
    assert list(report["resources"]) == CLASSES
    for name, row in report["resources"].items():
        assert set(row) == {"used", "available", "percent"}
        assert row["available"] == U280[name]
        assert row["percent"] == round(100 * row["used"] / row["available"], 3)
    assert isinstance(report["conv_arrays_that_fit"], int)
    assert report["conv_arrays_limited_by"] in CLASSES
    # The kernel is the sum of its parts, the conv array one of them.
    for name in CLASSES:
        assert report["conv_array"][name]["used"] <= report["resources"][name]["used"]


# The stand-in for Yosys never elaborates the kernel; Amaranth would warn about that.
@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_estimate_command_reports_the_kernel_and_its_conv_array(tmp_path, monkeypatch, capsys):
    conv = figures(lut=9_000, ff=7_000, dsp=145, ramb36=144)
    dense = figures(lut=20_000, ff=8_000, dsp=83, ramb36=2, ram64m=100)
    rest = figures(lut=8_000, ff=16_000, dsp=7, ramb36=17)
    for part, levels in ((conv, 8), (dense, 11), (rest, 6)):
        part["depth"] = {"lut_levels": levels, "carry": 1, "paths": [
            {"from": "a", "to": f"b{n}", "lut_levels": levels - n, "carry": 1}
            for n in range(4)]}
    calls = []

    def synthesize(component, name, *, apart=(), jobs=1):
        calls.append((type(component).__name__, name, apart, jobs))
        return {**add_figures(dense, conv, rest), "yosys_seconds": 1.0,
                "parts": {"dense": dense, "conv": conv, "rest": rest}}

    monkeypatch.setattr(estimate_module, "synthesize", synthesize)
    path = tmp_path / "estimate.json"
    assert main(["build", "estimate", "--json", str(path), "--jobs", "3", "--cus", "9"]) == 0
    gc.collect()  # the kernel is in a reference cycle: free it while the filter applies
    assert calls == [("VelcroKernel", "velcro_kernel", ("dense", "conv"), 3)]
    report = json.loads(path.read_text())
    check_report(report)
    assert {name: row["used"] for name, row in report["resources"].items()} == \
        {"LUT": 37_400, "FF": 31_000, "DSP": 235, "BRAM36": 163, "URAM": 0}
    # BRAM36: (2016 - 19) // 144 = 13 arrays; DSP would allow (9024 - 90) // 145 = 61.
    assert (report["conv_arrays_that_fit"], report["conv_arrays_limited_by"]) == (13, "BRAM36")
    assert report["parts"]["conv"]["dsp48e2"] == 145
    assert (report["parts"]["dense"]["lut"], report["parts"]["dense"]["lut_memory"]) == \
        (20_400, 400)
    assert list(report["parts"]) == ["velcro_kernel", "dense", "conv", "rest"]
    assert report["kernel"] == kernel_config.SHIPPED.name
    # The deepest part sets the kernel's depth; each part keeps its own paths.
    assert report["max_lut_levels"] == 11 and report["parts"]["conv"]["depth"]["lut_levels"] == 8
    out = capsys.readouterr().out
    assert "logic depth (LUT levels between registers), deepest 11:" in out
    assert "  dense     11 levels, 1 carry cells on the deepest path" in out
    assert "             9  a -> b2 (1 carry)" in out and "b3" not in out
    assert "conv arrays that fit beside the rest of the kernel: 13 (limited by BRAM36)" in out
    # Nine compute units: 9 x 163 = 1,467 BRAM36 (72.8 %), under 80 % of 2,016; ten would not.
    units = report["compute_units"]
    assert units["cus"] == 9 and units["fits"]
    assert units["resources"]["BRAM36"] == {"used": 1467, "percent": round(146_700 / 2016, 3)}
    assert (units["cus_that_fit"], units["cus_limited_by"]) == (9, "BRAM36")
    assert "9 compute unit(s): LUT 25.82%, FF 10.70%, DSP 23.44%, BRAM36 72.77%, URAM 0.00% " \
        "-> fits (every class under 80%)" in out
    assert "compute units that fit, every class under 80%: 9 (limited by BRAM36)" in out
    assert main(["build", "estimate", "--cus", "10"]) == 0
    gc.collect()
    assert "10 compute unit(s)" in (out := capsys.readouterr().out) and "does NOT fit" in out
    # A depth limit passes at the deepest part's depth and fails below it, after the
    # report is printed and written.
    assert main(["build", "estimate", "--max-lut-levels", "11"]) == 0
    path.unlink()
    assert main(["build", "estimate", "--json", str(path), "--max-lut-levels", "10"]) == 2
    gc.collect()
    out, err = capsys.readouterr()
    assert "logic depth (LUT levels between registers), deepest 11:" in out
    assert json.loads(path.read_text())["max_lut_levels"] == 11
    assert err.strip().splitlines()[-1].endswith(
        "logic depth: dense has 11 LUT levels between registers, over --max-lut-levels 10 "
        "(a -> b0)")


def test_compute_units_stay_under_the_budget_and_on_their_own_hbm_channels():
    report = {"resources": resources(figures(lut=100_000, ff=31_000, dsp=235, ramb36=163))}
    # BRAM36: 0.8 x 2016 // 163 = 9; LUT: 0.8 x 1303680 // 100000 = 10.
    assert cus_that_fit(report) == (9, "BRAM36")
    assert cus_that_fit(report, budget=1.0) == (12, "BRAM36")  # LUT 13; 16 by channels
    small = {"resources": resources(figures(lut=1_000, dsp=2))}
    assert cus_that_fit(small) == (16, "HBM")  # two channels each of the 32
    assert compute_units(small, 16)["fits"]
    units = compute_units(report, 2)
    assert units["fits"] and units["resources"]["LUT"] == {
        "used": 200_000, "percent": round(100 * 200_000 / 1_303_680, 3)}
    assert not compute_units(report, 10)["fits"]  # BRAM36 80.85 %
    assert compute_units(report, 10, budget=0.81)["fits"]


def test_estimate_refuses_compute_units_the_card_cannot_link(capsys):
    assert main(["build", "estimate", "--cus", "17"]) == 2
    assert "--cus: compute units must be 1 to 16" in capsys.readouterr().err


def test_estimate_needs_a_job(capsys):
    assert main(["build", "estimate", "--jobs", "0"]) == 2
    assert "--jobs must be at least 1, not 0" in capsys.readouterr().err
    assert main(["build", "estimate", "--max-lut-levels", "0"]) == 2
    assert "--max-lut-levels must be at least 1, not 0" in capsys.readouterr().err


@pytest.mark.slow
def test_the_shipped_kernel_takes_under_a_tenth_of_every_u280_resource(tmp_path):
    path = tmp_path / "estimate.json"
    # One Yosys process: other slow tests may share the cores (6.4 minutes on one core).
    assert main(["build", "estimate", "--json", str(path), "--jobs", "1"]) == 0
    report = json.loads(path.read_text())
    check_report(report)
    assert all(row["percent"] < 10 for row in report["resources"].values()), \
        report["resources"]
    # 16 lanes of nine multipliers map to DSP slices.
    assert report["conv_array"]["DSP"]["used"] >= 144
    # No part deeper than 8 LUT levels between registers (depth.lut_levels's rule), the
    # aim for the kernel's 300 MHz clock.
    deepest = {"dense": 8, "conv": 8, "rest": 8}
    for name, levels in deepest.items():
        depth = report["parts"][name]["depth"]
        assert depth["lut_levels"] <= levels, (name, depth["paths"][:3])
    assert report["conv_arrays_that_fit"] >= 10
    # The feature banks (two copies of nine banks, two blocks each) and the indices'
    # copy are UltraRAM, the program's copy block RAM; the LUTs bound the compute units,
    # before the HBM channels and either memory.
    assert report["parts"]["conv"]["uram"] == 36 and report["parts"]["conv"]["bram36"] == 0
    assert report["resources"]["URAM"]["used"] == 51
    assert report["compute_units"]["cus_limited_by"] == "LUT"
