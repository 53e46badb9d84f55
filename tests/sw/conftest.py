"""Fixtures of the card's software path without a card: the fake ``pyxrt`` and ``pynq``
bindings (``tests/sw/runtime/backends/fake_*.py``) in ``sys.modules``, and an XRT
installation of a chosen version."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

FAKES = Path(__file__).parent / "runtime" / "backends"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"velcro_tests_{name}", FAKES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fake_pyxrt = _load("fake_pyxrt")
fake_pynq = _load("fake_pynq")


@pytest.fixture
def card():
    """The fake card behind the fake bindings."""
    return fake_pyxrt.FakeCard()


@pytest.fixture
def bindings(monkeypatch, card):
    """``bindings(pyxrt=None | "2.14" | "2.20", pynq=False)``: those fake modules
    importable as ``pyxrt`` and ``pynq``, the others not; returns the card."""

    def put(pyxrt=None, pynq=False):
        monkeypatch.setitem(sys.modules, "pyxrt", fake_pyxrt.build(pyxrt, card) if pyxrt
                            else None)
        monkeypatch.setitem(sys.modules, "pynq", fake_pynq.build(card) if pynq else None)
        return card

    return put


@pytest.fixture
def xrt_install(tmp_path, monkeypatch):
    """``xrt_install(version)``: ``$XILINX_XRT`` names an XRT of ``version`` (``None``:
    no XRT anywhere); returns its folder. ``$VELCRO_BACKEND`` and ``$VELCRO_XCLBIN``
    are unset, and NumPy counts as 1.26 (PYNQ 3.0.1 needs NumPy 1)."""
    from velcro.sw.runtime.backends import alveo

    monkeypatch.setattr(alveo, "NUMPY_VERSION", "1.26.4")
    monkeypatch.delenv("VELCRO_BACKEND", raising=False)
    monkeypatch.delenv("VELCRO_XCLBIN", raising=False)
    monkeypatch.setattr(alveo, "XRT_ROOT", tmp_path / "no-xrt")

    def install(version):
        if version is None:
            monkeypatch.delenv("XILINX_XRT", raising=False)
            return None
        root = tmp_path / f"xrt-{version}"
        (root / "python").mkdir(parents=True)
        (root / "version.json").write_text(json.dumps({"BUILD_VERSION": version}))
        monkeypatch.setenv("XILINX_XRT", str(root))
        return root

    return install
