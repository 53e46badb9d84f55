"""kernel.xml (velcro.sw.build.kernel_xml) as PYNQ 3.0.1's own parser reads it."""

import contextlib
import importlib.util
import sys
import types
from pathlib import Path
from xml.etree import ElementTree

import pytest

from velcro.hw.kernel.connectivity import INSTANCE, KERNEL_NAME
from velcro.hw.kernel.regmap import (
    PORTS,
    REGMAP,
)
from velcro.sw.build.kernel_xml import kernel_xml


@contextlib.contextmanager
def pynq_xclbin_parser():
    """PYNQ 3.0.1's ``pynq.pl_server.xclbin_parser``, imported on its own.

    The parser needs only the standard library and ``pynq._3rdparty.xclbin``
    (ctypes); ``pynq/__init__.py`` would import PYNQ's runtime, whose dependencies
    are not installed (pynqutils pins numpy below 2). The two packages are entered
    in ``sys.modules`` without running their ``__init__`` and removed afterwards.
    """
    spec = importlib.util.find_spec("pynq")
    assert spec is not None, "pynq==3.0.1 is installed by `make setup` (without dependencies)"
    root = Path(list(spec.submodule_search_locations)[0])
    saved = {k: v for k, v in sys.modules.items() if k == "pynq" or k.startswith("pynq.")}
    try:
        for name, folder in (("pynq", root), ("pynq.pl_server", root / "pl_server")):
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
        yield importlib.import_module("pynq.pl_server.xclbin_parser")
    finally:
        for name in [k for k in sys.modules if k == "pynq" or k.startswith("pynq.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def postlink_metadata(text: str, base: int) -> bytes:
    """``kernel.xml`` as v++ embeds it in an xclbin: ports and args directly under the
    kernel, with one instance at ``base``."""
    kernel = ElementTree.fromstring(text).find("kernel")
    for wrapper in ("ports", "args"):
        group = kernel.find(wrapper)
        kernel.remove(group)
        kernel.extend(list(group))
    instance = ElementTree.SubElement(kernel, "instance", name=INSTANCE)
    ElementTree.SubElement(instance, "addrRemap", base=hex(base))
    project = ElementTree.Element("project")
    core = ElementTree.SubElement(ElementTree.SubElement(
        ElementTree.SubElement(project, "platform"), "device"), "core")
    core.append(kernel)
    return ElementTree.tostring(project)


@pytest.mark.parametrize("data_width", [256, 512])
def test_pynq_parser_reads_the_driver_register_map(data_width):
    text = kernel_xml(data_width)
    with pynq_xclbin_parser() as parser:
        ip_dict = parser._xclxml_to_ip_dict(postlink_metadata(text, 0x1800000), "0" * 32)
    assert list(ip_dict) == [INSTANCE]
    ip = ip_dict[INSTANCE]
    assert ip["phys_addr"] == 0x1800000 and ip["addr_range"] == REGMAP.size
    assert ip["hw_control_protocol"] == "ap_ctrl_hs"
    assert ip["cu_name"] == f"{KERNEL_NAME}:{INSTANCE}"
    registers = ip["registers"]
    # Exactly the control register and the arguments, with the driver's offsets.
    assert set(registers) == {"CTRL"} | {r.name for r in REGMAP.arguments}
    for reg in REGMAP.arguments:
        parsed = registers[reg.name]
        assert (parsed["address_offset"], parsed["size"], parsed["type"]) == \
            (reg.offset, reg.width, reg.ctype), reg.name
    assert [registers[r.name]["id"] for r in REGMAP.arguments] == \
        list(range(len(REGMAP.arguments)))
    ctrl_fields = {name: f["bit_offset"] for name, f in registers["CTRL"]["fields"].items()}
    assert ctrl_fields == {f.name: f.bit for f in REGMAP["CTRL"].fields}
    # Every m_axi port at the kernel's data width.
    ports = ElementTree.fromstring(text).find("kernel/ports")
    widths = {p.get("name"): int(p.get("dataWidth")) for p in ports if p.get("mode") == "master"}
    assert widths == dict.fromkeys(PORTS, data_width)
