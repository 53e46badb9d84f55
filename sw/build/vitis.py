"""The inputs of the Vitis flow for the Alveo U280, generated from the hardware's own data.

Two texts besides the Verilog and ``kernel.xml`` (:mod:`velcro.sw.build.kernel_xml`):

:func:`package_tcl`
    The Vivado batch script that packages the kernel's Verilog as an IP
    (``ipx::package_project``; UG1393 "Packaging the RTL Code as a Vitis XO") and
    turns it into ``velcro_kernel.xo`` with ``package_xo -kernel_xml``. Vivado infers
    the AXI interfaces from the port names; the script ties each one to ``ap_clk``,
    declares the clock frequency, and writes the ``s_axi_control`` memory map from
    :data:`~velcro.hw.kernel.regmap.REGMAP`, so the IP, ``kernel.xml`` and the host driver
    read one register map.
:func:`link_config`
    The ``v++ --link`` configuration: ``cus`` compute units named as the host driver
    expects (:func:`~velcro.hw.kernel.connectivity.instance`: ``velcro_kernel_1``,
    ``velcro_kernel_2``, ...) and an ``sp=`` line per ``m_axi`` port of each to its
    HBM pseudo-channel (:func:`~velcro.hw.kernel.connectivity.bank_of`; the two ports of
    constants of a unit share one, no two units share any).

The kernel clock is :data:`~velcro.hw.kernel.connectivity.CLOCK_HZ`, the frequency the
driver's watchdog and throughput projections assume.
"""

from __future__ import annotations

from velcro.hw.kernel.connectivity import (
    CLOCK_HZ,
    CONNECTIVITY,
    KERNEL_NAME,
    bank_of,
    check_cus,
    instance,
)
from velcro.hw.kernel.regmap import PORTS, REGMAP, RegisterMap

from .kernel_xml import VLNV
from .tcl import Call, Script, Var

__all__ = ["PART", "PLATFORM", "link_config", "package_tcl"]

#: The Vitis platform (shell) of the card.
PLATFORM = "xilinx_u280_gen3x16_xdma_1_202211_1"
#: The FPGA of the Alveo U280, for the packaging project.
PART = "xcu280-fsvh2892-2L-e"

# IP-XACT access of each register-map access kind.
_ACCESS = {"rw": "read-write", "ro": "read-only", "cor": "read-only", "tow": "read-write"}


def _here(*parts: str) -> Call:
    """A path relative to the folder of the script (Vivado may run from anywhere)."""
    return Call("file", "join", Var("here"), *parts)


def _memory_map(tcl: Script, regmap: RegisterMap) -> None:
    tcl.command("set", "map", Call("ipx::add_memory_map", "-quiet", "s_axi_control",
                                   Var("core")))
    tcl.command("set", "block", Call("ipx::add_address_block", "-quiet", "reg0", Var("map")))
    tcl.command("set_property", "range", regmap.size, Var("block"))
    for reg in regmap:
        tcl.command("set", "reg", Call("ipx::add_register", "-quiet", reg.name, Var("block")))
        tcl.command("set_property", "address_offset", f"0x{reg.offset:03X}", Var("reg"))
        tcl.command("set_property", "size", reg.width, Var("reg"))
        if reg.doc:
            tcl.command("set_property", "description", reg.doc, Var("reg"))
        if reg.pointer:
            tcl.command("set", "param", Call("ipx::add_register_parameter", "-quiet",
                                             "ASSOCIATED_BUSIF", Var("reg")))
            tcl.command("set_property", "value", reg.port, Var("param"))
        for f in reg.fields:
            tcl.command("set", "field", Call("ipx::add_field", f.name, Var("reg")))
            tcl.command("set_property", "bit_offset", f.bit, Var("field"))
            tcl.command("set_property", "bit_width", f.width, Var("field"))
            tcl.command("set_property", "access", _ACCESS[f.access], Var("field"))
            if f.access == "cor":
                tcl.command("set_property", "read_action", "clear", Var("field"))
            if f.access == "tow":
                tcl.command("set_property", "modified_write_value", "oneToToggle",
                            Var("field"))
            if f.doc:
                tcl.command("set_property", "description", f.doc, Var("field"))
    tcl.command("set_property", "slave_memory_map_ref", "s_axi_control",
                Call("ipx::get_bus_interfaces", "-of", Var("core"), "s_axi_control"))


def package_tcl(sources: list[str], *, kernel_xml: str, xo: str, ip_dir: str = "ip",
                project_dir: str = "vivado", regmap: RegisterMap = REGMAP,
                clock_hz: int = CLOCK_HZ, name: str = KERNEL_NAME, vlnv: str = VLNV) -> str:
    """The Vivado batch script that packages the kernel and writes its XO file.

    Parameters
    ----------
    sources : list of str
        Verilog files, relative to the script's folder.
    kernel_xml, xo : str
        ``kernel.xml`` (read) and the XO file (written), relative to the script's folder.
    ip_dir, project_dir : str
        Folders for the packaged IP and the throw-away packaging project.
    """
    if not sources:
        raise ValueError("the kernel needs at least one Verilog source")
    vendor, library, ip_name, version = vlnv.split(":")
    if ip_name != name:
        raise ValueError(f"VLNV {vlnv!r} does not name the kernel {name!r}")
    tcl = Script()
    tcl.comment(f"Packages {name} as a Vivado IP and a Vitis XO file. Generated by "
                "`velcro build xo`;\nrun as `vivado -mode batch -source <this file>`.")
    tcl.command("set", "here", Call("file", "normalize", Call("file", "dirname",
                                                              Call("info", "script"))))
    tcl.command("create_project", "-force", f"{name}_pack", _here(project_dir), "-part", PART)
    tcl.command("add_files", "-norecurse", Call("list", *(_here(s) for s in sources)))
    tcl.command("set_property", "top", name, Call("current_fileset"))
    tcl.command("update_compile_order", "-fileset", "sources_1")
    tcl.command("ipx::package_project", "-root_dir", _here(ip_dir), "-vendor", vendor,
                "-library", library, "-taxonomy", "/KernelIP", "-import_files",
                "-set_current", False)
    tcl.command("ipx::unload_core", _here(ip_dir, "component.xml"))
    tcl.command("ipx::edit_ip_in_project", "-upgrade", True, "-name", f"{name}_edit",
                "-directory", _here(ip_dir), _here(ip_dir, "component.xml"))
    tcl.command("set", "core", Call("ipx::current_core"))
    tcl.command("set_property", "version", version, Var("core"))
    tcl.comment("Interfaces: Vivado inferred them from the port names; all run on ap_clk.")
    for busif in ("s_axi_control", *PORTS):
        tcl.command("ipx::associate_bus_interfaces", "-busif", busif, "-clock", "ap_clk",
                    Var("core"))
    tcl.command("ipx::associate_bus_interfaces", "-clock", "ap_clk", "-reset", "ap_rst_n",
                Var("core"))
    tcl.command("set", "freq", Call("ipx::add_bus_parameter", "-quiet", "FREQ_HZ",
                                    Call("ipx::get_bus_interfaces", "-of", Var("core"),
                                         "ap_clk")))
    tcl.command("set_property", "value", clock_hz, Var("freq"))
    tcl.command("set_property", "value_resolve_type", "user", Var("freq"))
    tcl.comment("The control registers, from the register map that kernel.xml and the "
                "host driver read.")
    _memory_map(tcl, regmap)
    tcl.command("set_property", "sdx_kernel", True, Var("core"))
    tcl.command("set_property", "sdx_kernel_type", "rtl", Var("core"))
    tcl.command("ipx::create_xgui_files", Var("core"))
    tcl.command("ipx::update_checksums", Var("core"))
    tcl.command("ipx::check_integrity", "-kernel", Var("core"))
    tcl.command("ipx::save_core", Var("core"))
    tcl.command("close_project", "-delete")
    tcl.command("package_xo", "-force", "-xo_path", _here(xo), "-kernel_name", name,
                "-ip_directory", _here(ip_dir), "-kernel_xml", _here(kernel_xml))
    return tcl.text


def link_config(cus: int = 1, *, name: str = KERNEL_NAME) -> str:
    """The ``v++ --link`` configuration file: ``cus`` compute units, each port of each on
    its HBM channel (:func:`~velcro.hw.kernel.connectivity.bank_of`)."""
    check_cus(cus)
    names = [instance(cu) for cu in range(cus)]
    if not all(n.startswith(name) for n in names):
        raise ValueError(f"compute units {names} must be named after the kernel {name!r}")
    lines = [f"# {name} on the Alveo U280 ({PLATFORM}), {cus} compute unit"
             f"{'s' if cus > 1 else ''}. Generated by `velcro build xclbin`.",
             "", "[connectivity]", f"nk={name}:{cus}:{'.'.join(names)}"]
    lines += [f"sp={names[cu]}.{port}:{bank_of(port, cu).link_name}"
              for cu in range(cus) for port in CONNECTIVITY]
    return "\n".join(lines) + "\n"
