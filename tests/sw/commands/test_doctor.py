"""``velcro doctor`` through the command line: on a machine with none of the card's
software, and over the fake bindings, XRT installs and ``xbutil``."""

import json
import re
import sys

import pytest

from velcro.sw.build.vitis import PLATFORM
from velcro.sw.cli import main
from velcro.sw.commands.doctor import xbutil_devices

PYTHON = f"{sys.version_info.major}{sys.version_info.minor}"

# ``xbutil examine``'s "Devices present" table as XRT 2.14 prints it and as later ones do.
XBUTIL_2_14 = """\
XRT
  Version              : 2.14.354

Devices present
BDF             :  Shell                            Platform UUID  Device ID       Device Ready*
-------------------------------------------------------------------------------------------------
[0000:3b:00.1]  :  xilinx_u280_gen3x16_xdma_base_1  0x62ab8b0f     user(inst=128)  Yes

* Devices that are not ready will have reduced functionality when using XRT tools
"""
XBUTIL_LATER = """\
Devices present
BDF             Shell                            Logic UUID  Device ID       Device Ready*
--------------------------------------------------------------------------------------
[0000:3b:00.1]  xilinx_u280_gen3x16_xdma_base_1  0x62ab8b0f  user(inst=128)  Yes
[0000:d8:00.1]  xilinx_u280_gen3x16_xdma_base_1  0x62ab8b0f  user(inst=129)  No
"""


def doctor(capsys, *argv):
    assert main(["doctor", *argv]) == 0
    out = capsys.readouterr().out
    # Lines by check name: "ok    import pyxrt  imports".
    return {m.group(1): line for line in out.splitlines()
            if (m := re.match(r"(?:ok|FAIL|--)\s+(\S+(?: \S+)*?)\s{2,}", line))}, out


def test_a_machine_without_xrt_gets_every_check_and_its_fix(bindings, xrt_install, tmp_path,
                                                            capsys):
    bindings(pyxrt=None, pynq=False)
    xrt_install(None)
    lines, out = doctor(capsys, "--xclbin", str(tmp_path / "none.xclbin"))
    assert lines["XRT"].startswith("FAIL") and "no XRT installation" in lines["XRT"]
    assert "fix: install XRT (2.14 or later)" in out
    assert lines["import pyxrt"].startswith("FAIL") and lines["import pynq"].startswith("FAIL")
    assert "velcro run --backend auto finds none" in out
    assert "supported: pyxrt: any XRT" in out and "PYNQ 3.0.1: XRT 2.14 to 2.16" in out
    assert "cannot list cards" in out
    assert f"no bitstream at {tmp_path / 'none.xclbin'}" in out
    assert out.rstrip().endswith("problems found")


def test_the_real_machine_gets_a_report_and_exit_0(capsys):
    # Whatever this machine has: the report is printed and doctor exits 0.
    _, out = doctor(capsys)
    assert "XRT" in out and "bitstream" in out


@pytest.fixture
def xrt_with_pyxrt(bindings, xrt_install, card, tmp_path):
    """XRT 2.20 with a pyxrt built for this Python, its fake importable, a good xclbin."""
    bindings(pyxrt="2.20")
    root = xrt_install("2.20.197")
    (root / "python" / f"pyxrt.cpython-{PYTHON}-x86_64-linux-gnu.so").write_bytes(b"")
    return root, card.write_xclbin(tmp_path / "velcro.xclbin")


def test_with_pyxrt_everything_is_checked(xrt_with_pyxrt, capsys, tmp_path):
    root, xclbin = xrt_with_pyxrt
    lines, out = doctor(capsys, "--xclbin", str(xclbin), "--json", str(tmp_path / "d.json"))
    assert lines["XRT"].startswith("ok") and f"XRT 2.20.197 at {root}" in lines["XRT"]
    assert "is for Python 3." in lines["pyxrt build"]
    assert lines["pyxrt build"].startswith("ok")
    assert "velcro run --backend auto takes pyxrt" in out
    assert "[0000:3b:00.1] xilinx_u280_gen3x16_xdma_base_1 (via pyxrt)" in out
    assert f"is for {PLATFORM}" in out and "velcro_kernel takes 7 argument(s)" in out
    assert "no problems found" in out
    record = json.loads((tmp_path / "d.json").read_text())
    assert record["problems"] == 0 and {c["name"] for c in record["checks"]} >= {
        "XRT", "pyxrt build", "import pyxrt", "backend", "card 0", "bitstream platform"}


def test_a_bitstream_for_another_platform_or_kernel_is_a_problem(xrt_with_pyxrt, card,
                                                                 capsys, tmp_path):
    other = card.write_xclbin(tmp_path / "other.xclbin", xsa="xilinx_u250_gen3x16_xdma_4_1",
                              kernels=(("velcro_kernel", 6),))
    lines, out = doctor(capsys, "--xclbin", str(other))
    assert lines["bitstream platform"].startswith("FAIL") and "xilinx_u250_gen3x16_xdma_4_1" in out
    assert f"fix: rebuild it for {PLATFORM}" in out
    assert "velcro_kernel takes 6 argument(s), the register map 7" in out
    assert "2 problems found" in out
    lines, out = doctor(capsys, "--xclbin", str(card.write_xclbin(
        tmp_path / "vadd.xclbin", kernels=(("vadd", 3),))))
    assert "no kernel velcro_kernel (it has vadd)" in out
    _, out = doctor(capsys, "--xclbin", str(card.write_xclbin(
        tmp_path / "vbnv.xclbin", xsa="xilinx:u280:gen3x16_xdma_1:202211.1")))
    assert "no problems found" in out


def test_a_pyxrt_built_for_another_python_says_which(bindings, xrt_install, capsys):
    bindings(pyxrt=None)
    root = xrt_install("2.16.204")
    (root / "python" / "pyxrt.cpython-38-x86_64-linux-gnu.so").write_bytes(b"")
    _, out = doctor(capsys)
    assert "is for Python 3.8, this is Python 3." in out
    assert "fix: run velcro under Python 3.8" in out


def test_without_pyxrt_cards_come_from_xbutil(bindings, xrt_install, tmp_path, monkeypatch,
                                              capsys, card):
    bindings(pyxrt=None, pynq=True)
    xrt_install("2.16.204")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "examine.txt").write_text(XBUTIL_2_14)
    xbutil = bin_dir / "xbutil"
    xbutil.write_text(f"#!/bin/sh\nexec /bin/cat {tmp_path / 'examine.txt'}\n")
    xbutil.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    lines, out = doctor(capsys, "--xclbin", str(card.write_xclbin(tmp_path / "v.xclbin")))
    assert "[0000:3b:00.1] xilinx_u280_gen3x16_xdma_base_1 (via xbutil examine)" in out
    assert "velcro run --backend auto takes pynq" in out
    assert lines["import pyxrt"].startswith("--") and lines["import pynq"].startswith("ok")
    assert "cannot check its platform and kernel without pyxrt" in out


def test_xbutil_tables_of_old_and_new_xrt_are_read():
    assert xbutil_devices(XBUTIL_2_14) == [("0000:3b:00.1", "xilinx_u280_gen3x16_xdma_base_1")]
    assert xbutil_devices(XBUTIL_LATER) == [
        ("0000:3b:00.1", "xilinx_u280_gen3x16_xdma_base_1"),
        ("0000:d8:00.1", "xilinx_u280_gen3x16_xdma_base_1")]
    assert xbutil_devices("Devices present\n  0 devices found\n") == []
