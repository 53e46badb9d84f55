"""``velcro build xo|xclbin``: the generated inputs, and how Vivado and v++ are run.

The tools are replaced by scripts that record their arguments and write what the real
tool would (the XO file where the packaging script's ``package_xo`` puts it, the xclbin
named by ``-o``); a missing tool is a PATH without it. A small kernel keeps the
Verilog quick to generate; one test builds the inputs of the shipped kernel (about
30 s).
"""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

from velcro.hw.conv.config import ConvArrayConfig
from velcro.hw.dense.config import DenseConfig
from velcro.hw.kernel import config as kernel_config
from velcro.hw.kernel.config import KernelConfig
from velcro.hw.kernel.regmap import PORTS, REGMAP
from velcro.sw.build.bitstream import (
    BuildFolder,
    build_xclbin,
    build_xo,
    generate,
    write_if_changed,
)
from velcro.sw.build.vitis import PLATFORM, link_config
from velcro.sw.cli import main
from velcro.sw.errors import ToolError

SMALL = KernelConfig(ConvArrayConfig(lanes=2, max_height=8, max_width=8, max_channels=4),
                     DenseConfig(width=64, max_k=256, max_s=2, macs=8, max_n_in=16,
                                 max_n_out=8), data_width=256, max_program=8)

# Records its arguments and working directory, then does what the tool named like the
# script would leave behind; FAKE_EXIT makes it fail instead.
FAKE_TOOL = r'''#!{python}
import json, os, re, sys
from pathlib import Path

tool, args = Path(sys.argv[0]).name, sys.argv[1:]
record = {{"tool": tool, "args": args, "cwd": os.getcwd()}}
if tool == "vivado":
    script = Path(args[args.index("-source") + 1])
    text = script.read_text()
    record["sources_exist"] = all((script.parent / name).is_file() for name in
                                  re.findall(r"\[file join \$here (\S+\.(?:v|xml))\]", text))
    xo = re.search(r"package_xo .*-xo_path \[file join \$here (\S+)\]", text).group(1)
    product = script.parent / xo
elif tool == "v++":
    record["config"] = Path(args[args.index("--config") + 1]).read_text()
    product = Path(args[args.index("-o") + 1])
elif tool == "emconfigutil":
    product = Path(args[args.index("--od") + 1]) / "emconfig.json"
with open({log!r}, "a") as f:
    f.write(json.dumps(record) + "\n")
if os.environ.get("FAKE_EXIT"):
    sys.exit(int(os.environ["FAKE_EXIT"]))
product.write_text("built by a fake " + tool)
'''


@pytest.fixture
def tools(tmp_path, monkeypatch):
    """``tools("vivado", "v++")`` makes fakes of those tools, and nothing else, the PATH;
    returns the function that lists the calls of all fakes so far."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()

    def install(*names):
        for old in bin_dir.iterdir():
            old.unlink()
        for name in names:
            path = bin_dir / name
            path.write_text(FAKE_TOOL.format(python=sys.executable, log=str(log)))
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", str(bin_dir))
        return calls

    def calls():
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    return install


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("generated"), SMALL)


@pytest.fixture
def folder(generated, tmp_path):
    """A private copy of the generated inputs, with their modification times."""
    copy = tmp_path / "build"
    shutil.copytree(generated.path, copy)
    return BuildFolder(copy)


@pytest.fixture
def small_kernel(monkeypatch):
    monkeypatch.setattr(kernel_config, "SHIPPED", SMALL)


def master_ports(xml_path) -> dict[str, int]:
    kernel = ElementTree.parse(xml_path).getroot().find("kernel")
    return {p.get("name"): int(p.get("dataWidth")) for p in kernel.iter("port")
            if p.get("mode") == "master"}


def check_inputs(folder: BuildFolder, config: KernelConfig) -> None:
    """The four inputs agree with the register map, the ports and each other."""
    root = ElementTree.parse(folder.kernel_xml).getroot()
    kernel = root.find("kernel")
    assert kernel.get("name") == "velcro_kernel"
    args = {a.get("name"): a for a in kernel.iter("arg")}
    assert list(args) == [r.name for r in REGMAP.arguments]
    for reg in REGMAP.arguments:
        arg = args[reg.name]
        assert int(arg.get("offset"), 16) == reg.offset
        assert int(arg.get("size"), 16) == reg.width // 8
        assert arg.get("port") == (reg.port or "s_axi_control")
    assert master_ports(folder.kernel_xml) == {port: config.data_width for port in PORTS}

    verilog = folder.verilog.read_text()
    assert "module velcro_kernel(" in verilog
    header = verilog[verilog.index("module velcro_kernel("):]
    ports = re.split(r"[\s(),]+", header[:header.index(");")])
    for port in ("ap_clk", "ap_rst_n", "interrupt", "s_axi_control_awaddr",
                 *(f"{p}_{s}" for p in PORTS for s in ("araddr", "rdata", "awaddr", "wdata"))):
        assert port in ports, port

    tcl = folder.package_tcl.read_text()
    add_files = next(line for line in tcl.splitlines() if line.startswith("add_files"))
    for source in folder.path.glob("*.v"):
        assert f"[file join $here {source.name}]" in add_files
    assert "-kernel_xml [file join $here kernel.xml]" in tcl

    sp = {line.split(".", 1)[1].split(":")[0] for line in folder.link_cfg.read_text().splitlines()
          if line.startswith("sp=")}
    assert sp == set(master_ports(folder.kernel_xml))


def test_generated_inputs_agree_with_the_register_map_and_ports(generated):
    check_inputs(generated, SMALL)


def test_files_are_rewritten_only_when_their_text_changes(tmp_path):
    path = tmp_path / "f.txt"
    assert write_if_changed(path, "one")
    os.utime(path, (0, 0))
    assert not write_if_changed(path, "one")
    assert path.stat().st_mtime == 0
    assert write_if_changed(path, "two")
    assert path.read_text() == "two" and path.stat().st_mtime > 0
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_xclbin_without_tools_writes_the_inputs_and_names_both(small_kernel, tmp_path,
                                                                monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "out"
    assert main(["build", "xclbin", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("velcro: error: vivado and v++ not found on PATH")
    assert str(out) in err
    check_inputs(BuildFolder(out), SMALL)
    assert sorted(p.name for p in out.iterdir()) == \
        ["kernel.xml", "link.cfg", "package_xo.tcl", "velcro_kernel.v"]


def test_xclbin_runs_vivado_then_v_plus_plus_on_the_generated_files(small_kernel, tools,
                                                                    tmp_path, capsys):
    calls = tools("vivado", "v++")
    out = tmp_path / "out"
    assert main(["build", "xclbin", "--out", str(out)]) == 0
    folder = BuildFolder(out)
    vivado, vpp = calls()
    assert vivado["tool"] == "vivado" and vivado["cwd"] == str(out)
    assert vivado["args"] == ["-mode", "batch", "-nojournal", "-log", "vivado.log",
                              "-source", "package_xo.tcl"]
    assert vivado["sources_exist"]
    assert vpp["tool"] == "v++" and vpp["cwd"] == str(out)
    args = vpp["args"]
    assert args[:3] == ["-l", "-t", "hw"]
    assert args[args.index("--platform") + 1] == PLATFORM
    assert args[args.index("--kernel_frequency") + 1] == "300"
    assert args[args.index("-o") + 1] == "velcro_u280.xclbin"
    assert args[-1] == "velcro_kernel.xo"
    assert vpp["config"] == folder.link_cfg.read_text()
    assert folder.xclbin.read_text() == "built by a fake v++"
    assert capsys.readouterr().out.rstrip().endswith(str(folder.xclbin))

    # Nothing changed: neither tool runs again.
    assert main(["build", "xclbin", "--out", str(out)]) == 0
    assert len(calls()) == 2
    assert capsys.readouterr().out.rstrip().endswith("velcro_u280.xclbin  (up to date)")


def test_xclbin_of_n_compute_units_relinks_without_repackaging(small_kernel, tools, tmp_path,
                                                               capsys):
    calls = tools("vivado", "v++")
    out = tmp_path / "out"
    assert main(["build", "xclbin", "--out", str(out)]) == 0
    assert main(["build", "xclbin", "--out", str(out), "--cus", "3"]) == 0
    # The XO does not depend on the compute units: only v++ runs again, on 3 of them.
    assert [c["tool"] for c in calls()] == ["vivado", "v++", "v++"]
    config = calls()[-1]["config"]
    assert config == BuildFolder(out).link_cfg.read_text() == link_config(3)
    assert "nk=velcro_kernel:3:velcro_kernel_1.velcro_kernel_2.velcro_kernel_3" in config
    capsys.readouterr()
    assert main(["build", "xclbin", "--out", str(out), "--cus", "17"]) == 2
    assert "--cus: compute units must be 1 to 16" in capsys.readouterr().err
    assert BuildFolder(out).link_cfg.read_text() == link_config(3)


def test_xo_needs_only_vivado(folder, tools):
    calls = tools("vivado")
    assert build_xo(folder)
    assert [c["tool"] for c in calls()] == ["vivado"]
    assert folder.xo.read_text() == "built by a fake vivado"
    assert not build_xo(folder)
    assert build_xo(folder, force=True)
    assert len(calls()) == 2


def test_a_missing_vivado_is_found_before_v_plus_plus_runs(folder, tools):
    calls = tools("v++")
    with pytest.raises(ToolError, match=r"^vivado not found on PATH") as error:
        build_xclbin(folder)
    assert "v++" not in str(error.value)
    assert calls() == []


def test_a_current_xo_is_linked_without_vivado(folder, tools):
    tools("vivado")
    build_xo(folder)
    calls = tools("v++")
    assert build_xclbin(folder)
    assert [c["tool"] for c in calls()] == ["vivado", "v++"]
    # A changed input makes the XO stale again: now vivado is needed.
    time.sleep(0.01)
    write_if_changed(folder.kernel_xml, folder.kernel_xml.read_text() + "\n")
    with pytest.raises(ToolError, match=r"^vivado not found"):
        build_xclbin(folder)


def test_a_failing_tool_is_a_one_line_error_pointing_at_its_log(folder, tools, monkeypatch):
    tools("vivado")
    folder.xo.write_text("from an earlier run")
    monkeypatch.setenv("FAKE_EXIT", "1")
    with pytest.raises(ToolError) as error:
        build_xo(folder, force=True)
    assert str(error.value) == (f"vivado failed (exit 1) without writing velcro_kernel.xo; "
                                f"see {folder.path / 'vivado.log'}")
    assert not folder.xo.exists()


def test_make_calls_the_cli(tmp_path):
    fake = tmp_path / "velcro"
    log = tmp_path / "args.txt"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    fake.chmod(0o755)
    bitstreams = Path(__file__).parents[3] / "bitstreams"
    for target in ("xo", "xclbin", "estimate"):
        subprocess.run(["make", "-C", str(bitstreams), target, f"VELCRO={fake}",
                        f"OUT={tmp_path / 'out'}"], check=True, capture_output=True)
    assert log.read_text().splitlines() == [
        f"build xo --out {tmp_path / 'out'}",
        f"build xclbin --out {tmp_path / 'out'}",
        f"build estimate --json {tmp_path / 'out' / 'estimate.json'}",
    ]


def test_shipped_kernel_inputs_without_tools(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "out"
    assert main(["build", "xclbin", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("velcro: error: vivado and v++ not found")
    check_inputs(BuildFolder(out), kernel_config.SHIPPED)


def test_hw_emu_links_the_emulation_target_and_writes_its_emconfig(small_kernel, tools,
                                                                   tmp_path, capsys):
    calls = tools("vivado", "v++", "emconfigutil")
    out = tmp_path / "out"
    assert main(["build", "xclbin", "--target", "hw_emu", "--out", str(out)]) == 0
    folder = BuildFolder(out)
    vivado, vpp, emconfig = calls()
    assert vpp["args"][:3] == ["-l", "-t", "hw_emu"]
    assert vpp["args"][vpp["args"].index("-o") + 1] == "velcro_u280.hw_emu.xclbin"
    assert emconfig["tool"] == "emconfigutil" and emconfig["cwd"] == str(out)
    assert emconfig["args"] == ["--platform", PLATFORM, "--od", "."]
    assert folder.xclbin_for("hw_emu").is_file() and folder.emconfig.is_file()
    assert not folder.xclbin.exists()
    assert capsys.readouterr().out.rstrip().endswith("velcro_u280.hw_emu.xclbin")
    # Current: nothing runs again; the card's target is a link of its own.
    assert main(["build", "xclbin", "--target", "hw_emu", "--out", str(out)]) == 0
    assert len(calls()) == 3
    assert main(["build", "xclbin", "--out", str(out)]) == 0
    assert [c["tool"] for c in calls()[3:]] == ["v++"] and folder.xclbin.is_file()


def test_hw_emu_without_emconfigutil_names_it(small_kernel, tools, tmp_path, capsys):
    tools("vivado", "v++")
    assert main(["build", "xclbin", "--target", "hw_emu", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("velcro: error: emconfigutil not found on PATH")


# --- with the tools (``-m vivado``: Vivado and Vitis sourced, XRT for the emulation) -------

@pytest.mark.vivado
def test_vivado_packages_the_shipped_kernel(tmp_path):
    out = tmp_path / "build"
    assert main(["build", "xo", "--out", str(out)]) == 0
    with zipfile.ZipFile(BuildFolder(out).xo) as xo:
        assert any(name.endswith("kernel.xml") for name in xo.namelist())


@pytest.mark.vivado
def test_hardware_emulation_runs_footwear_like_golden(tmp_path, footwear_package,
                                                      monkeypatch):
    """``v++ -t hw_emu`` link, then two footwear images through the card's driver under
    XRT's emulator, bit-exact against the golden device."""
    from velcro.sw.data import make_task
    from velcro.sw.export.package import load
    from velcro.sw.runtime import Accelerator

    out = tmp_path / "build"
    assert main(["build", "xclbin", "--target", "hw_emu", "--out", str(out)]) == 0
    folder = BuildFolder(out)
    monkeypatch.setenv("XCL_EMULATION_MODE", "hw_emu")
    monkeypatch.setenv("EMCONFIG_PATH", str(out))
    package = load(footwear_package)
    images = make_task("footwear").split("validation").images[:2]
    device = Accelerator.open("alveo:0", xclbin=folder.xclbin_for("hw_emu"))
    try:
        device.load(package)
        logits = device.run(images, timeout=4 * 3600)
    finally:
        device.close()
    golden = Accelerator.open("golden")
    golden.load(package)
    np.testing.assert_array_equal(logits, golden.run(images))
