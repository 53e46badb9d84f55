# amaranth: UnusedElaboratable=no
"""Stream formats of the dense engine (velcro.hw.dense.format)."""

import numpy as np

from velcro.hw.dense import format as dense_streams
from velcro.hw.dense.config import DenseConfig, DenseLayer
from velcro.sw import golden


def test_codebook_beats_interleave_elements_of_a_block():
    config = DenseConfig(width=64, max_k=16, max_s=2, macs=4, max_n_in=16, max_n_out=16)
    layer = DenseLayer(n_in=4, n_out=4, k=8, s=2)
    cb = np.arange(2 * 8 * 2, dtype=np.int8).reshape(2, 8, 2)
    beats = dense_streams.codebook_beats(cb, layer, config)
    # Segment 0, block 0, element 0: element 0 of codewords 0..3.
    assert beats[0] == int.from_bytes(bytes([0, 2, 4, 6]), "little")
    assert beats[1] == int.from_bytes(bytes([1, 3, 5, 7]), "little")
    assert beats[2] == int.from_bytes(bytes([8, 10, 12, 14]), "little")
    assert len(beats) == 2 * 2 * 2
    shared = dense_streams.codebook_beats(cb[:1], layer, config)
    assert shared[4:] == shared[:4]


def test_output_beats_round_trip(small_dense):
    config = small_dense
    rng = np.random.default_rng(0)
    for logits in (False, True):
        layer = DenseLayer(n_in=8, n_out=13, logits=logits)
        y = rng.integers(-128, 128, 13).astype(np.int8) if not logits \
            else rng.integers(golden.ACC_MIN, golden.ACC_MAX, 13).astype(np.int32)
        beats = dense_streams.out_beats(y, layer, config)
        assert len(beats) == 2
        assert np.array_equal(dense_streams.decode_out(beats, layer, config), y)



def test_int8_weight_beats_hold_one_input_of_a_block_of_outputs(small_dense):
    config = small_dense                      # 8 MACs: 8 weights per beat
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (11, 5)).astype(np.int8)
    beats = dense_streams.weight_beats(w, config)
    assert len(beats) == 2 * 5                # two blocks of 8 outputs, 5 inputs each
    # Block 0, input 2: the weights of input 2 to outputs 0..7.
    assert beats[2] == int.from_bytes(w[:8, 2].tobytes(), "little")
    # Block 1, input 4: outputs 8..10, then zeros.
    assert beats[5 + 4] == int.from_bytes(w[8:, 4].tobytes() + bytes(5), "little")
    raw = np.frombuffer(dense_streams.weight_bytes(w, config), np.uint8)
    assert np.array_equal(dense_streams.decode_weights(raw, 11, 5, config), w)
