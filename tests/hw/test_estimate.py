"""Parsing of Yosys ``stat`` and, with Yosys, one DSP48E2 per multiplier of a lane."""

import pytest

from velcro.hw.conv_lane import ConvLane
from velcro.hw.estimate import parse_stat, synthesize

STAT_COUNT_FIRST = """
=== conv_array ===

        +----------Local Count, excluding submodules.
        |
    56208 wires
   123456 cells
      144   DSP48E2
       40   RAMB36E2
        6   RAMB18E2
     1200   FDRE
       30   FDSE
      900   LUT6
      100   LUT2
       12   RAM64M
        8   CARRY8
"""

STAT_NAME_FIRST = """
=== conv_array ===

   Number of wires:              56208
   Number of cells:             123456
     DSP48E2                       144
     FDRE                         1200
     LUT3                           77
     RAMB18E2                        4
"""


def test_counts_after_the_name_or_before_it():
    first = parse_stat(STAT_COUNT_FIRST)
    assert (first["dsp48e2"], first["ff"], first["lut"], first["bram36"], first["lutram"],
            first["carry"]) == (144, 1230, 1000, 43.0, 12, 8)
    second = parse_stat(STAT_NAME_FIRST)
    assert (second["dsp48e2"], second["ff"], second["lut"], second["bram36"]) == \
        (144, 1200, 77, 2.0)
    assert "cells" not in second["cells"] and second["cells"]["LUT3"] == 77


@pytest.mark.slow
def test_a_lane_maps_each_multiplier_to_one_dsp():
    figures = synthesize(ConvLane(8), "conv_lane")
    assert figures["dsp48e2"] == 9
