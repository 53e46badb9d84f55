"""The kernel part of ``velcro bench hw`` on the small kernel under Verilator: its figures
hang together, and its checks fail a run whose logits or counters disagree with the
golden model or the kernel cost model."""

import dataclasses

import pytest

from velcro.hw.kernel import cost
from velcro.hw.kernel.config import SMALL
from velcro.hw.kernel.connectivity import CLOCK_HZ
from velcro.sim.backend import DEFAULT_LATENCY
from velcro.sw.bench import hw
from velcro.sw.cli import main
from velcro.sw.data import make_task
from velcro.sw.errors import DeviceError
from velcro.sw.export import export
from velcro.sw.export.package import load
from velcro.sw.models import load_reference
from velcro.sw.runtime.partition import partition
from velcro.sw.runtime.program import compile_segment


@pytest.fixture(scope="module")
def packages(footwear_package):
    plain = export(load_reference(), make_task("footwear"))
    return {"plain": plain, "velcro": load(footwear_package)}


@pytest.fixture(scope="module")
def image():
    return make_task("footwear").split("validation").images[:1]


@pytest.fixture(scope="module")
def images():
    return make_task("footwear").split("validation").images[:2]


@pytest.fixture(scope="module")
def figures(packages, images):
    return hw.kernel_figures(packages, config=SMALL, images=images, fit=3)


def hw_program(packages, suffix):
    return compile_segment(list(partition(packages["velcro" if suffix else "plain"],
                                          SMALL)[0].layers), SMALL)


def test_kernel_figures_are_consistent(figures, packages):
    f = figures
    assert f["memory_latency_cycles"] == DEFAULT_LATENCY
    assert f["images"] == 2
    assert f["cycles_per_image_velcro"] < f["cycles_per_image"]
    for suffix in ("", "_velcro"):
        assert f[f"cycles_per_image{suffix}"] > f[f"cycles_per_image_no_latency{suffix}"]
        assert f[f"stall_fraction{suffix}"] == round(
            f[f"stall_cycles_per_image{suffix}"] / f[f"cycles_per_image{suffix}"], 4)
        assert 0 < f[f"stall_fraction{suffix}"] < 1
        # The small kernel keeps no constants on chip: a further image moves what the
        # first did but the run's counter records and status block, written once.
        assert f[f"hbm_bytes_first_image{suffix}"] - f[f"hbm_bytes_per_image{suffix}"] == \
            hw_program(packages, suffix).counter_bytes
        energy = f[f"energy_per_image{suffix}"]
        assert f[f"energy_pj_per_image{suffix}"] == energy["pj"]
        assert energy["hbm_bytes"] == round(f[f"hbm_bytes_per_image{suffix}"])
        assert energy["parts_pj"]["hbm"] == round(energy["hbm_bytes"] * 8 *
                                                  hw.ENERGY_PJ["hbm_bit"])
        layers = f["kernel_cycles_reference"].values()
        assert sum(layer[f"cycles{suffix}"] for layer in layers) < f[f"cycles_per_image{suffix}"]
    assert f["mac_weighted_C"] == 0 < f["mac_weighted_C_velcro"] < 1
    saving = 1 - f["cycles_per_image_velcro"] / f["cycles_per_image"]
    # Both figures are rounded to 4 places: the ratio of the rounded ones may differ.
    assert f["velcro_saving_over_mac_weighted_C"] == pytest.approx(
        saving / f["mac_weighted_C_velcro"], abs=1e-3)
    # VELCRO saves MACs and feature-buffer reads; its masks and means cost memory traffic.
    plain, velcro = f["energy_per_image"], f["energy_per_image_velcro"]
    assert velcro["macs"] < plain["macs"] and velcro["parts_pj"]["mac"] < plain["parts_pj"]["mac"]
    assert velcro["sram_64bit_accesses"] < plain["sram_64bit_accesses"]
    assert f["hbm_bytes_per_image_velcro"] > f["hbm_bytes_per_image"]
    for energy in (plain, velcro):
        assert abs(energy["pj"] - sum(energy["parts_pj"].values())) <= 1
    assert f["card_images_per_s_300mhz"] == round(3 * CLOCK_HZ / f["cycles_per_image"], 1)


@pytest.fixture(scope="module")
def exact_run(packages, image):
    return hw.run_kernel(packages["velcro"], image, SMALL, latency=0)


def check(packages, image, run, *, logits=None):
    hw.check_run(packages["velcro"], SMALL, image,
                 run["logits"] if logits is None else logits, run["steps"], run["totals"],
                 exact=True)


def test_the_check_passes_the_run_it_was_made_for(packages, image, exact_run):
    check(packages, image, exact_run)


def test_corrupted_logits_fail_the_check(packages, image, exact_run):
    logits = exact_run["logits"].copy()
    logits[0, 1] += 1
    with pytest.raises(DeviceError, match=r"^kernel: the logits of 1 of 1 image\(s\) differ "
                                          r"from the golden model's$"):
        check(packages, image, exact_run, logits=logits)


@pytest.mark.parametrize("field, name", [("mac_cycles", "MAC cycles"), ("busy", "busy cycles"),
                                         ("skipped", "skipped elements")])
def test_a_wrong_cost_model_fails_the_check(packages, image, exact_run, monkeypatch, field,
                                            name):
    right = cost.conv_cost

    def wrong(layer, mask, config):
        modelled = right(layer, mask, config)
        return dataclasses.replace(modelled, **{field: getattr(modelled, field) + 1})

    monkeypatch.setattr(cost, "conv_cost", wrong)
    with pytest.raises(DeviceError, match=rf"conv1 \(CONV\) counted \d+ {name}, the cost "
                                          r"model \d+ for 1 image") as info:
        check(packages, image, exact_run)
    assert "\n" not in str(info.value)


def test_only_an_exact_run_needs_the_modelled_busy_cycles(packages, image, exact_run,
                                                          monkeypatch):
    """Under latency a stream may run dry: busy may exceed the model, never fall short."""
    right = cost.conv_cost
    monkeypatch.setattr(cost, "conv_cost", lambda *a: dataclasses.replace(
        right(*a), busy=right(*a).busy - 1))
    hw.check_run(packages["velcro"], SMALL, image, exact_run["logits"], exact_run["steps"],
                 exact_run["totals"], exact=False)
    with pytest.raises(DeviceError, match="busy cycles"):
        check(packages, image, exact_run)


def test_a_disagreement_fails_velcro_bench_hw_with_exit_code_2(packages, images, monkeypatch,
                                                               capsys):
    """The kernel part of ``velcro bench hw`` (the engine parts left out) under a cost
    model one MAC cycle off: a one-line error and exit code 2, no figures."""
    right, figures = cost.conv_cost, hw.kernel_figures
    monkeypatch.setattr(cost, "conv_cost", lambda *a: dataclasses.replace(
        right(*a), mac_cycles=right(*a).mac_cycles + 1))
    monkeypatch.setattr(hw, "conv_figures", lambda seed: {})
    monkeypatch.setattr(hw, "dense_figures", lambda seed, icarus: {})
    monkeypatch.setattr(hw, "kernel_figures", lambda: figures(
        packages, config=SMALL, images=images))
    assert main(["bench", "hw", "--no-yosys", "--no-icarus"]) == 2
    out, err = capsys.readouterr()
    assert "cycles_per_image" not in out
    assert "at latency 0: conv1 (CONV) counted" in err
    assert len([line for line in err.splitlines() if not line.startswith("[bench hw]")]) == 1


def test_the_kernel_figures_need_two_images(packages, image):
    with pytest.raises(ValueError, match=r"^the kernel figures need at least 2 images .*, not 1$"):
        hw.kernel_figures(packages, config=SMALL, images=image)


def test_velcro_bench_takes_its_kernel_figures_from_the_kernel_bench(figures, monkeypatch):
    """``velcro bench`` (the suite) with its other parts left out."""
    from velcro.sw.bench import suite

    monkeypatch.setattr(hw, "conv_figures", lambda seed: {})
    monkeypatch.setattr(hw, "dense_figures", lambda seed, icarus: {})
    monkeypatch.setattr(hw, "kernel_figures", lambda: figures)
    monkeypatch.setattr(suite, "software_figures", lambda: {})
    result = suite.run()
    assert result["cycles_per_image"] == figures["cycles_per_image"]
    assert result["velcro_C"] == figures["C_velcro"] > 0
    assert result["velcro_saving_over_C"] == round(
        figures["velcro_cycle_saving"] / figures["C_velcro"], 4)
    assert result["projected_images_per_s_300mhz"] == round(
        CLOCK_HZ / figures["cycles_per_image"], 1)
