"""The Vivado packaging script and the v++ link configuration.

The script runs under Tcl's own shell with the Vivado commands replaced by stubs that
record their arguments, so the checks see what Vivado would be asked to do.
"""

import subprocess

import pytest

from velcro.hw.kernel.connectivity import (
    CHANNELS_PER_CU,
    CLOCK_HZ,
    CONNECTIVITY,
    INSTANCE,
    KERNEL_NAME,
    MAX_CUS,
    bank_of,
)
from velcro.hw.kernel.regmap import PORTS, REGMAP
from velcro.sw.build.kernel_xml import VLNV
from velcro.sw.build.vitis import PART, link_config, package_tcl

# Vivado stubs: every call is printed as hex-encoded words; the object-returning ipx
# commands return handles that name what they made, so properties can be traced.
STUBS = r"""
namespace eval ipx {}
proc record {args} {
    set words {}
    foreach a $args { lappend words [binary encode hex [encoding convertto utf-8 $a]] }
    puts [join $words " "]
}
proc unknown {args} { record {*}$args; return "<[lindex $args 0]>" }
proc ipx::current_core {} { return core }
proc ipx::get_bus_interfaces {args} { return "busif:[lindex $args end]" }
proc ipx::add_memory_map {args} { record ipx::add_memory_map {*}$args; return map }
proc ipx::add_address_block {args} { record ipx::add_address_block {*}$args; return block }
proc ipx::add_register {args} { return "register:[lindex $args end-1]" }
proc ipx::add_field {name reg} { return "$reg/field:$name" }
proc ipx::add_register_parameter {args} { return "[lindex $args end]/[lindex $args end-1]" }
proc ipx::add_bus_parameter {args} { return "[lindex $args end]/[lindex $args end-1]" }
proc add_files {args} {
    foreach f [lindex $args end] { record add_file $f [file exists $f] }
}
"""


def run_stubbed(script_path) -> list[list[str]]:
    """The Vivado commands ``script_path`` calls, each as its list of words."""
    program = STUBS + "source {" + str(script_path) + "}\n"
    out = subprocess.run(["tclsh", "/dev/stdin"], input=program, capture_output=True,
                         text=True, check=True).stdout
    return [[bytes.fromhex(w).decode() for w in line.split(" ")] if line else [""]
            for line in out.splitlines()]


def properties(calls) -> dict[str, dict[str, str]]:
    props: dict[str, dict[str, str]] = {}
    for words in calls:
        if words[0] == "set_property":
            name, value, target = words[1:]
            props.setdefault(target, {})[name] = value
    return props


def command(calls, name) -> list[str]:
    matches = [words for words in calls if words[0] == name]
    assert len(matches) == 1, f"{name} called {len(matches)} times"
    return matches[0]


def option(words, flag) -> str:
    return words[words.index(flag) + 1]


@pytest.fixture
def folder(tmp_path):
    """A build folder with a space in its path, two sources and a kernel.xml."""
    where = tmp_path / "my build"
    where.mkdir()
    for name in ("velcro_kernel.v", "extra.v", "kernel.xml"):
        (where / name).write_text("")
    (where / "package_xo.tcl").write_text(package_tcl(
        ["velcro_kernel.v", "extra.v"], kernel_xml="kernel.xml", xo="velcro_kernel.xo"))
    return where


def test_sources_are_added_from_the_scripts_folder(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the script does not depend on the working directory
    calls = run_stubbed(folder / "package_xo.tcl")
    added = [words[1:] for words in calls if words[0] == "add_file"]
    assert added == [[str(folder / "velcro_kernel.v"), "1"], [str(folder / "extra.v"), "1"]]
    assert option(command(calls, "create_project"), "-part") == PART


def test_package_xo_reads_the_kernel_xml_and_writes_the_xo_beside_the_script(folder):
    calls = run_stubbed(folder / "package_xo.tcl")
    xo = command(calls, "package_xo")
    assert option(xo, "-kernel_name") == KERNEL_NAME
    assert option(xo, "-kernel_xml") == str(folder / "kernel.xml")
    assert option(xo, "-xo_path") == str(folder / "velcro_kernel.xo")
    assert option(xo, "-ip_directory") == str(folder / "ip")
    assert "-force" in xo
    # The IP is packaged where package_xo looks for it, under the kernel.xml's VLNV.
    pack = command(calls, "ipx::package_project")
    assert option(pack, "-root_dir") == str(folder / "ip")
    vendor, library, name, version = VLNV.split(":")
    assert (option(pack, "-vendor"), option(pack, "-library")) == (vendor, library)
    assert properties(calls)["core"]["version"] == version
    assert ["set_property", "top", KERNEL_NAME, "<current_fileset>"] in calls
    # Packaging happens before package_xo, and the temporary project is closed.
    order = [words[0] for words in calls]
    assert order.index("ipx::save_core") < order.index("close_project") < \
        order.index("package_xo")


def test_every_interface_runs_on_ap_clk_at_the_driver_clock(folder):
    calls = run_stubbed(folder / "package_xo.tcl")
    associated = {option(words, "-busif") for words in calls
                  if words[0] == "ipx::associate_bus_interfaces" and "-busif" in words}
    assert associated == {"s_axi_control", *PORTS}
    assert all(option(words, "-clock") == "ap_clk" for words in calls
               if words[0] == "ipx::associate_bus_interfaces")
    assert ["ipx::associate_bus_interfaces", "-clock", "ap_clk", "-reset", "ap_rst_n",
            "core"] in calls
    freq = properties(calls)["busif:ap_clk/FREQ_HZ"]
    assert freq["value"] == str(CLOCK_HZ) == "300000000"


def test_the_memory_map_is_the_register_map(folder):
    props = properties(run_stubbed(folder / "package_xo.tcl"))
    assert props["block"]["range"] == str(REGMAP.size)
    for reg in REGMAP:
        handle = f"register:{reg.name}"
        assert int(props[handle]["address_offset"], 16) == reg.offset, reg.name
        assert int(props[handle]["size"]) == reg.width, reg.name
        busif = props.get(f"{handle}/ASSOCIATED_BUSIF", {}).get("value")
        assert busif == reg.port, reg.name
        for f in reg.fields:
            field = props[f"{handle}/field:{f.name}"]
            assert (int(field["bit_offset"]), int(field["bit_width"])) == (f.bit, f.width)
            writable = f.access in ("rw", "tow")
            assert field["access"] == ("read-write" if writable else "read-only")
            assert (field.get("read_action") == "clear") == (f.access == "cor")
    assert props["busif:s_axi_control"]["slave_memory_map_ref"] == "s_axi_control"
    assert props["core"]["sdx_kernel"] == "true"
    assert props["core"]["sdx_kernel_type"] == "rtl"


def test_a_script_needs_sources_and_a_matching_vlnv():
    with pytest.raises(ValueError, match="at least one Verilog source"):
        package_tcl([], kernel_xml="kernel.xml", xo="k.xo")
    with pytest.raises(ValueError, match="does not name the kernel"):
        package_tcl(["k.v"], kernel_xml="kernel.xml", xo="k.xo", vlnv="a:b:other:1.0")


def test_link_config_puts_one_compute_unit_and_each_port_on_its_hbm_channel():
    text = link_config()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "[connectivity]"
    assert lines[1] == f"nk={KERNEL_NAME}:1:{INSTANCE}"
    sp = sorted(line.removeprefix("sp=") for line in lines[2:])
    assert sp == sorted(f"{INSTANCE}.{port}:HBM[{CONNECTIVITY[port]}]" for port in PORTS)
    assert all(f"{INSTANCE}.{port}:{bank_of(port).link_name}" in sp for port in PORTS)
    assert len(lines) == 2 + len(PORTS)


def test_link_config_instance_is_named_after_the_kernel():
    with pytest.raises(ValueError, match="named after the kernel"):
        link_config(name="other")


@pytest.mark.parametrize("cus", [2, MAX_CUS])
def test_link_config_of_n_compute_units_gives_each_unit_its_own_channels(cus):
    lines = [line for line in link_config(cus).splitlines() if line and not line.startswith("#")]
    names = [f"{KERNEL_NAME}_{n}" for n in range(1, cus + 1)]
    assert lines[1] == f"nk={KERNEL_NAME}:{cus}:{'.'.join(names)}"
    sp = [line.removeprefix("sp=").split(":") for line in lines[2:]]
    assert len(sp) == cus * len(PORTS)
    assert {target for target, _ in sp} == {f"{name}.{port}" for name in names for port in PORTS}
    channels = {target: int(bank[4:-1]) for target, bank in sp}
    assert max(channels.values()) < 32
    # No two units share a channel; within a unit the two ports of constants share one,
    # the activations have their own.
    units = [{c for t, c in channels.items() if t.startswith(f"{n}.")} for n in names]
    assert all(len(u) == CHANNELS_PER_CU == 2 for u in units)
    assert len(set().union(*units)) == cus * CHANNELS_PER_CU
    for n in names:
        assert channels[f"{n}.m_axi_program"] == channels[f"{n}.m_axi_indices"]
        assert channels[f"{n}.m_axi_data"] != channels[f"{n}.m_axi_program"]
    # The second compute unit's ports follow the first one's channels, port by port.
    second = {target.split(".")[1]: bank for target, bank in sp if target.startswith(names[1])}
    assert second == {port: f"HBM[{CONNECTIVITY[port] + CHANNELS_PER_CU}]" for port in PORTS}


@pytest.mark.parametrize("cus", [0, MAX_CUS + 1, 1.5])
def test_link_config_refuses_compute_units_the_channels_cannot_hold(cus):
    with pytest.raises(ValueError, match=f"compute units must be 1 to {MAX_CUS}"):
        link_config(cus)
