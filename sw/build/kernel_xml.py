"""``kernel.xml``: the Vitis description of ``velcro_kernel``, generated from the register map.

The Vitis linker and XRT learn the kernel's interface from this file (UG1702, "RTL
Kernel XML File"): the ``s_axi_control`` window, every ``m_axi`` port with its data
width, and the arguments with their register offsets, sizes and C types. Everything
comes from :data:`~velcro.hw.kernel.regmap.REGMAP` and :data:`~velcro.hw.kernel.regmap.PORTS`;
types are plain C types (``unsigned int``, ``void*``) because PYNQ maps ``type=``
through a table of C type names (``*`` marks a pointer).

The document is built with :mod:`xml.etree.ElementTree`, never by pasting strings.
"""

from __future__ import annotations

from xml.etree import ElementTree

from velcro.hw.kernel.connectivity import KERNEL_NAME
from velcro.hw.kernel.regmap import PORTS, REGMAP, RegisterMap

__all__ = ["VLNV", "kernel_xml"]

VLNV = f"velcro.org:kernel:{KERNEL_NAME}:1.0"


def _hex(value: int) -> str:
    return f"0x{value:X}"


def kernel_xml(data_width: int, regmap: RegisterMap = REGMAP, *,
               name: str = KERNEL_NAME, vlnv: str = VLNV) -> str:
    """The ``kernel.xml`` text for a kernel whose ``m_axi`` ports are ``data_width`` bits."""
    root = ElementTree.Element("root", versionMajor="1", versionMinor="6")
    kernel = ElementTree.SubElement(root, "kernel", {
        "name": name, "language": "ip_c", "vlnv": vlnv, "attributes": "",
        "preferredWorkGroupSizeMultiple": "0", "workGroupSize": "1", "interrupt": "true",
        "hwControlProtocol": "ap_ctrl_hs",
    })
    ports = ElementTree.SubElement(kernel, "ports")
    ElementTree.SubElement(ports, "port", {
        "name": "s_axi_control", "mode": "slave", "range": _hex(regmap.size),
        "dataWidth": "32", "portType": "addressable", "base": "0x0"})
    for port in PORTS:
        ElementTree.SubElement(ports, "port", {
            "name": port, "mode": "master", "range": "0xFFFFFFFFFFFFFFFF",
            "dataWidth": str(data_width), "portType": "addressable", "base": "0x0"})
    args = ElementTree.SubElement(kernel, "args")
    for index, reg in enumerate(regmap.arguments):
        size = _hex(reg.width // 8)
        ElementTree.SubElement(args, "arg", {
            "name": reg.name, "addressQualifier": "1" if reg.pointer else "0",
            "id": str(index), "port": reg.port or "s_axi_control", "size": size,
            "offset": _hex(reg.offset), "type": reg.ctype, "hostOffset": "0x0",
            "hostSize": size})
    ElementTree.indent(root)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            + ElementTree.tostring(root, encoding="unicode") + "\n")
