"""``velcro build verilog``: one Verilog file per listed engine."""

import pytest

from velcro.hw import engines
from velcro.hw.conv.array import ConvArray
from velcro.hw.conv.config import ConvArrayConfig
from velcro.sw.cli import main


@pytest.fixture
def small_engines(monkeypatch):
    small = ConvArrayConfig(lanes=1, max_height=3, max_width=3, max_channels=1)
    monkeypatch.setattr(engines, "ENGINES", (
        engines.Engine("conv_array", lambda: ConvArray(small), "small conv array"),
        engines.Engine("other_array", lambda: ConvArray(small), "another one"),
    ))


def test_writes_each_engine_as_a_verilog_module(small_engines, tmp_path, capsys):
    assert main(["build", "verilog", "--out", str(tmp_path)]) == 0
    for name in ("conv_array", "other_array"):
        text = (tmp_path / f"{name}.v").read_text()
        assert f"module {name}(" in text
        # Ports keep Amaranth's flattened names, the ones the benches and the kernel use.
        for port in ("layer__c_in", "weights__payload", "mask__ready", "ofmap__valid",
                     "stats__mac_cycles"):
            assert port in text
    assert "conv_array.v" in capsys.readouterr().out


def test_selects_engines_by_name(small_engines, tmp_path):
    assert main(["build", "verilog", "--out", str(tmp_path), "--engine", "other_array"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["other_array.v"]


def test_unknown_engine_is_a_one_line_error(small_engines, tmp_path, capsys):
    assert main(["build", "verilog", "--out", str(tmp_path), "--engine", "fft"]) == 2
    assert "no engine 'fft'; known: conv_array, other_array" in capsys.readouterr().err


def test_engines_are_found_by_name():
    assert engines.engine("conv_array").name == "conv_array"
    with pytest.raises(KeyError, match="no engine 'fft'; known: conv_array"):
        engines.engine("fft")
