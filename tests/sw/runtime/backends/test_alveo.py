"""The ``alveo`` backend without a card: the backend each XRT and import situation gets,
and both adapters over the fake bindings (``fake_pyxrt``, ``fake_pynq``): buffers in the
connected banks, arguments in register-map order, syncs both ways, every terminal state,
32-bit scalars, and timed-out runs whose buffers outlive them."""

import numpy as np
import pytest

from velcro.hw.kernel.config import SHIPPED
from velcro.hw.kernel.connectivity import CHANNELS_PER_CU, CONNECTIVITY, INSTANCE
from velcro.hw.kernel.regmap import REGMAP
from velcro.sw.data import make_task
from velcro.sw.errors import DeviceError
from velcro.sw.export.package import load
from velcro.sw.runtime import Accelerator
from velcro.sw.runtime.backends import alveo

TERMINAL_FAILURES = ["ERT_CMD_STATE_ERROR", "ERT_CMD_STATE_ABORT", "ERT_CMD_STATE_TIMEOUT",
                     "ERT_CMD_STATE_NORESPONSE", "ERT_CMD_STATE_SKERROR",
                     "ERT_CMD_STATE_SKCRASHED"]


@pytest.fixture
def xclbin(tmp_path, card):
    return card.write_xclbin(tmp_path / "velcro.xclbin")


def start(platform, card, images=3, watchdog=70000):
    """Allocate every pointer argument in its bank and start one run."""
    values = {}
    for reg in REGMAP.arguments:
        if reg.pointer:
            bank = f"HBM{CONNECTIVITY[reg.port]}"
            values[reg.name] = platform.allocate((64,), np.uint8, getattr(platform.overlay,
                                                                          bank))
    values.update(images=images, watchdog=watchdog)
    return values, getattr(platform.overlay, INSTANCE).start(**values)


# --- which backend ----------------------------------------------------------------------
@pytest.mark.parametrize("version, pyxrt, pynq, expected", [
    ("2.14.354", "2.14", True, "pyxrt"),
    ("2.16.204", None, True, "pynq"),
    ("2.14.354", None, True, "pynq"),
    ("2.20.197", "2.20", True, "pyxrt"),
    ("2.17.319", "2.20", False, "pyxrt"),
])
def test_auto_takes_pyxrt_when_it_imports_and_pynq_only_on_xrt_2_14_to_2_16(
        bindings, xrt_install, version, pyxrt, pynq, expected):
    bindings(pyxrt=pyxrt, pynq=pynq)
    xrt_install(version)
    assert alveo.choose_backend("auto", alveo.find_xrt()) == expected


@pytest.mark.parametrize("version", ["2.17.319", "2.20.197", "2.13.479", None])
def test_when_neither_backend_works_the_error_names_the_xrt_and_the_matrix(
        bindings, xrt_install, version):
    bindings(pyxrt=None, pynq=True)
    root = xrt_install(version)
    with pytest.raises(DeviceError) as e:
        alveo.choose_backend("auto", alveo.find_xrt())
    message = str(e.value)
    assert f"XRT {version} at {root}" in message if version else "no XRT installation" in message
    assert "pyxrt: not installed" in message
    assert "pynq: PYNQ 3.0.1 works with XRT 2.14 to 2.16 only" in message
    assert "supported: pyxrt: any XRT" in message and "PYNQ 3.0.1: XRT 2.14 to 2.16" in message


def test_an_explicit_backend_is_taken_or_refused_with_why(bindings, xrt_install):
    bindings(pyxrt="2.20", pynq=True)
    xrt_install("2.17.319")
    xrt = alveo.find_xrt()
    assert alveo.choose_backend("pyxrt", xrt) == "pyxrt"
    with pytest.raises(DeviceError, match="pynq: PYNQ 3.0.1 works with XRT 2.14 to 2.16"):
        alveo.choose_backend("pynq", xrt)
    with pytest.raises(DeviceError, match="no backend 'xrt'; choose auto, pyxrt, pynq"):
        alveo.choose_backend("xrt", xrt)
    bindings(pyxrt=None, pynq=True)
    xrt_install(None)
    # Asked for by name, PYNQ is tried when no version says it cannot work.
    assert alveo.choose_backend("pynq", alveo.find_xrt()) == "pynq"


def test_the_xrt_version_comes_from_version_json_of_xilinx_xrt_or_opt(xrt_install, tmp_path,
                                                                         monkeypatch):
    root = xrt_install("2.15.225")
    assert alveo.find_xrt() == alveo.XrtInstall(root, "2.15.225")
    assert alveo.find_xrt().release == (2, 15) and alveo.find_xrt().runs_pynq
    (root / "version.json").write_text("not json")
    assert alveo.find_xrt() == alveo.XrtInstall(root, None)
    xrt_install(None)
    assert alveo.find_xrt() == alveo.XrtInstall(None, None)
    opt = tmp_path / "opt-xrt"
    opt.mkdir()
    (opt / "version.json").write_text('{"BUILD_VERSION": "2.16.204"}')
    monkeypatch.setattr(alveo, "XRT_ROOT", opt)
    assert alveo.find_xrt() == alveo.XrtInstall(opt, "2.16.204")


def test_open_platform_takes_the_backend_from_the_argument_or_velcro_backend(
        bindings, xrt_install, xclbin, monkeypatch):
    bindings(pyxrt="2.20", pynq=True)
    xrt_install("2.16.204")
    assert isinstance(alveo.open_platform(0, xclbin=xclbin), alveo.XrtPlatform)
    assert isinstance(alveo.open_platform(0, xclbin=xclbin, backend="pynq"),
                      alveo.PynqPlatform)
    monkeypatch.setenv("VELCRO_BACKEND", "pynq")
    assert isinstance(alveo.open_platform(0, xclbin=xclbin), alveo.PynqPlatform)


def test_alveo_without_bitstream_or_bindings_is_a_device_error(tmp_path, bindings,
                                                               xrt_install):
    with pytest.raises(DeviceError, match="alveo:1: no bitstream at"):
        alveo.open_platform(1, xclbin=tmp_path / "none.xclbin")
    xclbin = tmp_path / "velcro.xclbin"
    xclbin.write_bytes(b"xclbin2\0")
    bindings(pyxrt=None, pynq=False)
    xrt_install(None)
    with pytest.raises(DeviceError, match="alveo:0: no backend can drive the card"):
        Accelerator.open("alveo:0", xclbin=xclbin)


def test_alveo_backend_failures_are_device_errors(tmp_path, bindings, xrt_install,
                                                  monkeypatch):
    xclbin = tmp_path / "velcro.xclbin"
    xclbin.write_bytes(b"xclbin2\0")
    bindings(pyxrt=None, pynq=True)
    xrt_install("2.14.354")

    def broken(index, path, cus):
        raise OSError("no card")

    monkeypatch.setattr(alveo, "PynqPlatform", broken)
    with pytest.raises(DeviceError, match="alveo:0: PYNQ 3.0.1 failed: OSError: no card"):
        alveo.open_platform(0, xclbin=xclbin)


# --- both adapters over the fake card ---------------------------------------------------
@pytest.fixture(params=["pyxrt-2.14", "pyxrt-2.20", "pynq"])
def platform(request, bindings, xrt_install, xclbin):
    name = request.param
    bindings(pyxrt=name.split("-")[1] if "-" in name else None, pynq=name == "pynq")
    xrt_install("2.16.204")
    return alveo.open_platform(0, xclbin=xclbin, backend=name.split("-")[0])


def test_buffers_land_in_the_bank_their_port_is_connected_to(platform, card):
    start(platform, card)
    groups = [event[4] for event in card.of("bo")]
    assert groups == [CONNECTIVITY[r.port] for r in REGMAP.arguments if r.pointer]
    assert all(event[3] == "normal" and event[2] == 64 for event in card.of("bo"))


def test_arguments_go_in_register_map_order(platform, card):
    values, _ = start(platform, card, images=5, watchdog=1234)
    args = card.of("set_arg")
    assert [index for _, index, _ in args] == list(range(len(REGMAP.arguments)))
    pointers = [r.name for r in REGMAP.arguments if r.pointer]
    for (_, _, value), reg in zip(args, REGMAP.arguments, strict=True):
        if reg.pointer:
            buf = values[reg.name]
            # pyxrt gets the buffer object, PYNQ its device address.
            assert value in (getattr(buf.bo, "ident", None), buf.device_address), reg.name
        else:
            assert value == values[reg.name]
    assert len(pointers) == 5 and card.events[-1] == ("start",)


def test_syncs_go_both_ways_over_the_whole_buffer(platform, card):
    buf = platform.allocate((100,), np.uint8, platform.overlay.HBM1)
    buf.sync_to_device()
    buf.sync_from_device()
    assert [(d, size, offset) for _, _, d, size, offset in card.of("sync")] == [
        ("XCL_BO_SYNC_BO_TO_DEVICE", 100, 0), ("XCL_BO_SYNC_BO_FROM_DEVICE", 100, 0)]


def test_a_completed_run_is_done(platform, card):
    card.polls = 2
    _, handle = start(platform, card)
    assert not handle.done and not handle.done
    assert handle.done


@pytest.mark.parametrize("state", TERMINAL_FAILURES)
def test_every_other_terminal_state_ends_the_run_with_a_device_error_naming_it(
        platform, card, state):
    card.final_state = state
    _, handle = start(platform, card)
    with pytest.raises(DeviceError, match=f"the kernel run ended in {state}$"):
        assert handle.done


def test_32_bit_scalars_of_2_31_and_up_reach_the_kernel_with_their_bits(platform, card):
    start(platform, card, watchdog=(1 << 32) - 1)
    value = card.of("set_arg")[REGMAP.arguments.index(REGMAP["watchdog"])][2]
    assert value & 0xFFFFFFFF == (1 << 32) - 1


@pytest.mark.parametrize("bad", [1 << 32, -1])
def test_scalars_outside_32_bits_are_refused_clearly(bindings, xrt_install, xclbin, card,
                                                     bad):
    bindings(pyxrt="2.20")
    platform = alveo.open_platform(0, xclbin=xclbin)
    with pytest.raises(DeviceError, match=f"watchdog = {bad} does not fit the 32-bit"):
        start(platform, card, watchdog=bad)


def test_a_timed_out_run_keeps_its_buffers_until_it_ends(platform, card, monkeypatch):
    monkeypatch.setattr(alveo, "ABORT_GRACE", 0.01)
    card.polls = None
    values, handle = start(platform, card)
    assert handle.abort() is False
    for buf in values.values():
        if hasattr(buf, "freebuffer"):
            buf.freebuffer()
    assert not card.of("free")
    card.polls = 0
    assert handle.abort() is True
    assert len(card.of("free")) == 5


def test_a_finished_runs_buffers_are_freed_at_once(platform, card):
    values, handle = start(platform, card)
    assert handle.done
    values["inputs"].freebuffer()
    assert len(card.of("free")) == 1


def test_pyxrt_has_no_register_access_and_the_kernel_says_so(bindings, xrt_install, xclbin,
                                                            card):
    module = bindings(pyxrt="2.14") and __import__("pyxrt")
    kernel = module.kernel(module.device(0), module.device(0).load_xclbin(str(xclbin)),
                           "velcro_kernel")
    with pytest.raises(AttributeError):
        kernel.read_register(0x10)
    with pytest.raises(AttributeError):
        module.run(kernel).abort()
    with pytest.raises(TypeError):
        module.run(kernel).set_arg(6, 1 << 31)
    platform = alveo.open_platform(0, xclbin=xclbin, backend="pyxrt")
    with pytest.raises(DeviceError, match="pyxrt cannot read the kernel's registers"):
        getattr(platform.overlay, INSTANCE).read(REGMAP["status"].offset)


def test_a_pyxrt_that_fails_to_import_says_why_and_auto_falls_back_to_pynq(
        bindings, xrt_install, tmp_path, monkeypatch):
    bindings(pyxrt=None, pynq=True)
    monkeypatch.delitem(__import__("sys").modules, "pyxrt")
    (tmp_path / "pyxrt.py").write_text("raise ImportError('built for Python 3.8')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert alveo.probe("pyxrt") == "ImportError: built for Python 3.8"
    xrt_install("2.16.204")
    assert alveo.choose_backend("auto", alveo.find_xrt()) == "pynq"


def test_pynq_is_refused_under_numpy_2(bindings, xrt_install, monkeypatch):
    bindings(pyxrt=None, pynq=True)
    xrt_install("2.16.204")
    monkeypatch.setattr(alveo, "NUMPY_VERSION", "2.1.3")
    with pytest.raises(DeviceError, match="pynq: PYNQ 3.0.1 needs NumPy < 2, not 2.1.3"):
        alveo.choose_backend("auto", alveo.find_xrt())


# --- the driver over the adapters -------------------------------------------------------
def accelerator(backend, package, bindings, xrt_install, xclbin):
    bindings(pyxrt="2.20" if backend == "pyxrt" else None, pynq=backend == "pynq")
    xrt_install("2.16.204")
    device = Accelerator.open("alveo:0", xclbin=xclbin, backend=backend)
    device.load(package)
    device.platform.min_timeout, device.platform.poll = 0.05, 0.0
    return device


@pytest.mark.parametrize("backend", ["pyxrt", "pynq"])
def test_a_run_that_times_out_frees_none_of_its_buffers(backend, tiny_package, bindings,
                                                        xrt_install, xclbin, card,
                                                        images_for, monkeypatch):
    monkeypatch.setattr(alveo, "ABORT_GRACE", 0.01)
    device = accelerator(backend, tiny_package, bindings, xrt_install, xclbin)
    card.polls = None
    with pytest.raises(DeviceError, match=r"did not finish .* still running \(xbutil reset"):
        device.run(images_for(tiny_package, 2))
    assert not card.of("free")


@pytest.mark.parametrize("backend", ["pyxrt", "pynq"])
def test_a_run_ending_in_error_is_a_device_error_through_the_driver(
        backend, tiny_package, bindings, xrt_install, xclbin, card, images_for):
    device = accelerator(backend, tiny_package, bindings, xrt_install, xclbin)
    card.final_state = "ERT_CMD_STATE_SKCRASHED"
    with pytest.raises(DeviceError, match="the kernel run ended in ERT_CMD_STATE_SKCRASHED"):
        device.run(images_for(tiny_package, 2))
    # The run has ended: its three buffers go back at once.
    assert len(card.of("free")) == 3


@pytest.mark.parametrize("backend", ["pyxrt", "pynq"])
def test_footwear_through_the_adapter_is_bit_exact_with_golden(
        backend, footwear_package, bindings, xrt_install, xclbin, card, golden_accelerator):
    """The whole adapter path on a card that runs the program in its own memory: data
    reach it only through the syncs, and the status block comes back the same way."""
    package = load(footwear_package)
    images = make_task("footwear").split("validation").images[:24]
    card.kernel = SHIPPED
    device = accelerator(backend, package, bindings, xrt_install, xclbin)
    logits = device.run(images)
    golden = golden_accelerator(package)
    want = golden.run(images)
    assert logits.dtype == want.dtype and np.array_equal(logits, want)
    assert len(card.of("start")) == sum(1 for stage in device.stages if stage.device)
    synced = {e[2] for e in card.of("sync")}
    assert synced == {"XCL_BO_SYNC_BO_TO_DEVICE", "XCL_BO_SYNC_BO_FROM_DEVICE"}
    assert device.images == 24 and device.counters() == golden.counters()


# --- on a card (``-m board``: an Alveo U280 with the bitstream, XRT sourced) ---------------

@pytest.mark.board
def test_footwear_on_the_card_matches_golden(footwear_package, golden_accelerator):
    """100 footwear images on ``alveo:0`` (bitstream from ``$VELCRO_XCLBIN`` or the build
    folder): logits bit-exact and the kernel's MAC-cycle and skip counts as golden's."""
    package = load(footwear_package)
    images = make_task("footwear").split("validation").images[:100]
    device = Accelerator.open("alveo:0")
    try:
        device.load(package)
        logits = device.run(images)
    finally:
        device.close()
    golden = golden_accelerator(package)
    np.testing.assert_array_equal(logits, golden.run(images))
    assert [(c.mac_cycles, c.skipped) for c in device.counters()] == \
        [(c.mac_cycles, c.skipped) for c in golden.counters()]


@pytest.mark.parametrize("backend", ["pyxrt", "pynq"])
def test_two_compute_units_through_the_adapter_are_bit_exact_with_golden(
        backend, footwear_package, bindings, xrt_install, card, golden_accelerator, tmp_path):
    """A bitstream of two compute units: each unit is opened by its name, its buffers go
    to its own channels, both run their share, and the logits come back in order."""
    package = load(footwear_package)
    images = make_task("footwear").split("validation").images[:9]
    card.kernel = SHIPPED
    xclbin = card.write_xclbin(tmp_path / "two.xclbin", cus=2)
    bindings(pyxrt="2.20" if backend == "pyxrt" else None, pynq=backend == "pynq")
    xrt_install("2.16.204")
    with pytest.raises(DeviceError, match=r"has no compute unit velcro_kernel_3.*--cus 3"):
        Accelerator.open("alveo:0", xclbin=xclbin, backend=backend, cus=3)
    device = Accelerator.open("alveo:0", xclbin=xclbin, backend=backend, cus=2)
    device.load(package)
    logits = device.run(images)
    golden = golden_accelerator(package)
    np.testing.assert_array_equal(logits, golden.run(images))
    assert device.counters() == golden.counters()
    stages = sum(1 for stage in device.stages if stage.device)
    assert len(card.of("start")) == 2 * stages
    # Every unit's buffers in its own two channels: HBM[0..1] and HBM[2..3].
    assert {event[-1] for event in card.of("bo")} == set(range(2 * CHANNELS_PER_CU))
    first, second = device.last_unit_cycles
    assert first > 0 and second > 0
