"""``velcro_kernel``'s Verilog driven by the host runtime in cocotb (velcro.sim.kernel_bench).

Every simulation runs the runtime's own driver against the RTL (the ``sim``
backend) and compares the logits bit for bit with :mod:`velcro.sw.golden`; cycle
counters are checked against :mod:`velcro.hw.kernel.cost`, and the status block the
kernel ends a run with against the golden kernel model's. The shipped kernel is
built once for Verilator and shared by the tests, which run the footwear package
with int8 and with codebook (PQ, k-means) dense layers; Icarus runs a small kernel on
the tiny package, whose partition also puts layers on the host. The memory answers
with its HBM-like latency unless a test asks for none (the cycle-exact ones).
"""

import hashlib
import time

import numpy as np
import pytest

from velcro.hw.conv.config import ConvArrayConfig
from velcro.hw.dense.config import DenseConfig
from velcro.hw.kernel.config import SHIPPED, SMALL, STATUS_BLOCK, KernelConfig
from velcro.hw.kernel.cost import END_FIXED, RUN_FIXED
from velcro.hw.kernel.descriptor import DESCRIPTOR_BYTES, Opcode
from velcro.sim.backend import DEFAULT_LATENCY, build_kernel
from velcro.sw import golden
from velcro.sw.data import make_task
from velcro.sw.export.package import load
from velcro.sw.runtime import Accelerator, DeviceTimeout, KernelError
from velcro.sw.runtime.backends.golden import GoldenPlatform
from velcro.sw.runtime.partition import partition
from velcro.sw.runtime.program import compile_segment

#: A tiny kernel: the tiny package splits into two device stages around host layers.
SPLIT = KernelConfig(ConvArrayConfig(lanes=2, max_height=8, max_width=8, max_channels=4),
                     DenseConfig(width=64, max_k=256, max_s=2, macs=8, max_n_in=16,
                                 max_n_out=8), data_width=256, max_program=8)


def session(config, package, actions, *, simulator="verilator", pause=0.0, seed=0,
            latency=DEFAULT_LATENCY):
    model = build_kernel(config, simulator)
    result = model.run("velcro.sim.kernel_bench", {
        "config": config, "package": package, "pause": pause, "seed": seed,
        "latency": latency, "actions": actions})
    return result


def validation_images(n, start=0):
    return make_task("footwear").split("validation").images[start:start + n]


def sha256(logits):
    return hashlib.sha256(np.asarray(logits.argmax(1), "<i8").tobytes()).hexdigest()


def check_counters(program, outcome, images, *, exact):
    """Per descriptor: cycles are fixed + busy + stall; busy is the cost model's (exactly
    when no AXI channel paused, at least otherwise); MAC cycles and skips are exact."""
    counters = outcome["counters"]
    assert [c.name for c in counters] == [s.name for s in program.steps[:-1]]
    for step, measured in zip(program.steps, counters, strict=False):
        cost = step.cost
        assert measured.cycles == images * cost.fixed + measured.busy + measured.stall_cycles, \
            step.name
        if exact:
            assert measured.busy == images * cost.busy, step.name
        else:
            assert measured.busy >= images * cost.busy, step.name
        assert measured.mac_cycles == images * cost.mac_cycles, step.name
        assert measured.skipped == images * cost.skipped, step.name
    totals = outcome["totals"]
    outside = totals["stall_cycles"] - sum(c.stall_cycles for c in counters)
    assert totals["cycles"] == sum(c.cycles for c in counters) + images * END_FIXED + \
        RUN_FIXED + outside
    assert totals["skipped"] == sum(c.skipped for c in counters)


def golden_blocks(config, package, actions):
    """The status block of every ``run`` of ``actions`` on the golden device (``poke``,
    ``reload`` and ``watchdog`` replayed as the bench does)."""
    accelerator = Accelerator(GoldenPlatform(config), config, "golden")
    accelerator.load(package)
    blocks = []
    for action in actions:
        if "run" in action:
            try:
                accelerator.run(np.asarray(action["run"]))
            except KernelError:
                pass
            blocks.append(accelerator.driver.last_block)
        elif "watchdog" in action:
            accelerator.driver.watchdog = action["watchdog"]
        elif "poke" in action:
            argument, offset, raw = action["poke"]
            buffer = accelerator.buffers(0)[argument]
            buffer[offset:offset + len(raw)] = np.frombuffer(raw, np.uint8)
            buffer.sync_to_device()
        elif "reload" in action:
            accelerator.load(package)
    return blocks


def untimed(block, *, faulted=False):
    """``block`` as the golden model, which has no memory latency, writes it: no stall
    cycles, and no cycles at all for a faulted run (the model does not time those)."""
    values = STATUS_BLOCK.from_bits(int.from_bytes(block, "little"))
    fields = {name: int(getattr(values, name)) for name, _ in STATUS_BLOCK}
    fields["cycles"] = 0 if faulted else fields["cycles"] - fields["stall_cycles"]
    fields["stall_cycles"] = 0
    return STATUS_BLOCK.const(fields).as_bits().to_bytes(len(block), "little")


@pytest.fixture(scope="module")
def footwear(footwear_package):
    package = load(footwear_package)
    program = compile_segment(list(partition(package, SHIPPED)[0].layers), SHIPPED)
    return package, program


def test_reference_images_match_golden_under_axi_pauses(footwear):
    """Pauses on every AXI channel, over the memory's latency: bit-exact logits, and
    the pauses (counted by the bus models) cost stall cycles beyond the latency's."""
    package, program = footwear
    images = validation_images(1)
    paused = session(SHIPPED, package, [{"run": images}], pause=0.3, seed=1)
    steady = session(SHIPPED, package, [{"run": images}], seed=1)
    for result in (paused, steady):
        outcome = result["outcomes"][0]
        np.testing.assert_array_equal(outcome["logits"], golden.run(package, images))
        check_counters(program, outcome, 1, exact=False)
    assert paused["pause_cycles"] > 0
    assert steady["pause_cycles"] == 0
    stalls = [r["outcomes"][0]["totals"]["stall_cycles"] for r in (paused, steady)]
    assert stalls[0] > stalls[1] > 0


def test_memory_latency_costs_stall_cycles_only(footwear):
    """The default HBM-like latency against none: the same logits, MAC cycles, skips and
    memory traffic, and more stall cycles; without latency busy is the cost model's."""
    package, program = footwear
    images = validation_images(1)
    outcomes = {latency: session(SHIPPED, package, [{"run": images}],
                                 latency=latency)["outcomes"][0]
                for latency in (0, DEFAULT_LATENCY)}
    for latency, outcome in outcomes.items():
        np.testing.assert_array_equal(outcome["logits"], golden.run(package, images))
        check_counters(program, outcome, 1, exact=latency == 0)
    none, hbm = outcomes[0], outcomes[DEFAULT_LATENCY]
    assert hbm["bytes"] == none["bytes"] > 0
    assert hbm["totals"]["stall_cycles"] > none["totals"]["stall_cycles"]
    assert hbm["totals"]["cycles"] - hbm["totals"]["stall_cycles"] >= \
        none["totals"]["cycles"] - none["totals"]["stall_cycles"]
    # Every descriptor but a run's first is requested while the one before it runs:
    # a step without input streams (pooling, flattening) waits for no descriptor either.
    quiet = [(step.name, measured.stall_cycles)
             for step, measured in zip(program.steps, hbm["counters"], strict=False)
             if step.opcode in (Opcode.POOL, Opcode.FLATTEN)]
    assert len(quiet) == 3 and all(stall < DEFAULT_LATENCY // 10 for _, stall in quiet), quiet


def test_the_next_images_input_is_read_while_this_one_runs(footwear):
    """The input load asks for the next image's tensor ahead (``LOAD_MAP`` with
    ``ahead``): under the latency a run's later images wait for no input read, and the
    run reads no input beyond its last image."""
    package, program = footwear
    assert program.steps[0].opcode == Opcode.LOAD_MAP and program.steps[0].fields["ahead"]
    images = validation_images(3)
    outcomes = {n: session(SHIPPED, package, [{"run": images[:n]}])["outcomes"][0]
                for n in (1, 3)}
    for n, outcome in outcomes.items():
        np.testing.assert_array_equal(outcome["logits"], golden.run(package, images[:n]))
        check_counters(program, outcome, n, exact=False)
    one, three = outcomes[1], outcomes[3]
    # Each later image would otherwise wait at least the latency for its first word.
    later = three["counters"][0].stall_cycles - one["counters"][0].stall_cycles
    assert one["counters"][0].stall_cycles >= DEFAULT_LATENCY
    assert later < DEFAULT_LATENCY // 2, later
    assert three["bytes"] - one["bytes"] == 2 * (program.input_stride + program.output_stride)


def test_back_to_back_runs_are_cycle_exact_without_pauses_or_latency(footwear):
    package, program = footwear
    first, second = validation_images(2), validation_images(2, start=2)
    result = session(SHIPPED, package, [{"run": first}, {"run": second}], latency=0)
    expected = golden_blocks(SHIPPED, package, [{"run": first}, {"run": second}])
    for images, outcome, block in zip((first, second), result["outcomes"], expected,
                                      strict=True):
        np.testing.assert_array_equal(outcome["logits"], golden.run(package, images))
        check_counters(program, outcome, 2, exact=True)
        assert outcome["totals"]["images_done"] == 2
        assert untimed(outcome["block"]) == block


def test_constants_cross_the_port_once_per_run(footwear):
    """The program and indices buffers are read for a run's first image only: each
    further image moves its input and its output and nothing else. A run after the
    host rewrote a constant reads it anew."""
    package, program = footwear
    three, one = validation_images(3), validation_images(1)
    names = [s.name for s in program.steps]
    io = program.steps[names.index("input")].fields["io"]["stride"] + \
        program.steps[names.index("fc2")].fields["out"]["stride"]
    weight = program.steps[names.index("conv1")].fields["weights"]["offset"]
    poke = {"poke": ("program", weight, bytes([0x7F]))}
    actions = [{"run": three}, {"run": one}, poke, {"run": three}]
    outcomes = session(SHIPPED, package, actions)["outcomes"]
    many, single, poked = outcomes[0], outcomes[1], outcomes[3]
    assert many["bytes"] - single["bytes"] == 2 * io
    np.testing.assert_array_equal(many["logits"], golden.run(package, three))
    check_counters(program, many, 3, exact=False)
    device = Accelerator(GoldenPlatform(SHIPPED), SHIPPED, "golden")
    device.load(package)
    buffer = device.buffers(0)["program"]
    buffer[weight] = 0x7F
    buffer.sync_to_device()
    expected = device.run(three)
    assert not np.array_equal(expected, golden.run(package, three))
    np.testing.assert_array_equal(poked["logits"], expected)


@pytest.fixture(scope="module")
def codebook_package():
    """The footwear package with codebook dense layers, as ``velcro export --dense``
    makes them: fc1 product quantized (k = 16, segments of 4), fc2 scalar k-means
    (k = 16, one codebook shared by the whole layer)."""
    from velcro.sw.export import export
    from velcro.sw.models import load_reference
    from velcro.sw.vq.finetune import dense_weights
    from velcro.sw.vq.methods import quantize_layers

    model = load_reference()
    weights = dense_weights(model, ["fc1", "fc2"])
    dense = {**quantize_layers({"fc1": weights["fc1"]}, "pq", {"k": 16, "segment": 4}),
             **quantize_layers({"fc2": weights["fc2"]}, "km", {"k": 16})}
    return export(model, make_task("footwear"), [20, 30, 30, 20], dense=dense)


def test_codebook_dense_layers_on_the_shipped_kernel(codebook_package):
    """PQ and shared k-means layers in the shipped dense engine, inside the whole kernel:
    bit-exact logits and cycle-exact counters without latency."""
    package = codebook_package
    ops = {layer.name: (layer.op, layer.attrs.get("shared")) for layer in package.layers}
    assert ops["fc1"] == ("dense_codebook", False) and ops["fc2"] == ("dense_codebook", True)
    stages = partition(package, SHIPPED)
    assert len(stages) == 1 and stages[0].device
    program = compile_segment(list(stages[0].layers), SHIPPED)
    images = validation_images(2)
    outcome = session(SHIPPED, package, [{"run": images}], latency=0)["outcomes"][0]
    np.testing.assert_array_equal(outcome["logits"], golden.run(package, images))
    check_counters(program, outcome, 2, exact=True)
    dense = [c for c in outcome["counters"] if c.opcode == "DENSE"]
    assert [c.name for c in dense] == ["fc1", "fc2"]


def test_errors_end_the_run_and_the_next_run_succeeds(footwear):
    package, program = footwear
    images = validation_images(1)
    expected = golden.run(package, images)
    conv2 = [s.name for s in program.steps].index("conv2")
    weights = program.steps[conv2].fields["weights"]
    actions = [
        {"fail": ("program", weights["offset"], 64)}, {"run": images},
        {"heal": True}, {"run": images},
        {"poke": ("program", 3 * DESCRIPTOR_BYTES, bytes([14]))}, {"run": images},
        {"reload": True}, {"run": images},
        {"fail_writes": "m_axi_data"}, {"run": images},
        {"heal": True}, {"run": images},
        # Loading the 28x28 input takes about 800 cycles: over a 200-cycle limit.
        {"watchdog": 200}, {"run": images}, {"watchdog": None}, {"run": images},
        {"watchdog": 0}, {"stall": "m_axi_program"}, {"run": images, "timeout": 1e-4},
    ]
    build_kernel(SHIPPED)
    start = time.perf_counter()
    outcomes = session(SHIPPED, package, actions, latency=0)["outcomes"]
    assert time.perf_counter() - start < 120, "an error run took too long to end"
    runs = [o for a, o in zip(actions, outcomes, strict=True) if "run" in a]
    (read_error, healed, bad_opcode, reloaded, write_error, rewritten, over_time, restored,
     hung) = runs
    assert isinstance(read_error["error"], KernelError)
    assert "AXI_READ" in str(read_error["error"])
    assert "at descriptor 2 (CONV, conv2)" in str(read_error["error"])
    assert isinstance(bad_opcode["error"], KernelError)
    assert "BAD_DESCRIPTOR" in str(bad_opcode["error"])
    assert "at descriptor 3 (unknown opcode 14, pool2)" in str(bad_opcode["error"])
    assert isinstance(write_error["error"], KernelError)
    assert "AXI_WRITE" in str(write_error["error"])
    assert isinstance(over_time["error"], KernelError)
    assert "WATCHDOG" in str(over_time["error"])
    assert "at descriptor 0 (LOAD_MAP, input)" in str(over_time["error"])
    for outcome in (healed, reloaded, rewritten, restored):
        np.testing.assert_array_equal(outcome["logits"], expected)
    assert isinstance(hung["error"], DeviceTimeout)
    assert "did not finish 1 image(s)" in str(hung["error"])
    # The blocks of a bad descriptor's and a watchdog's end are the golden model's.
    replayed = [{"poke": ("program", 3 * DESCRIPTOR_BYTES, bytes([14]))}, {"run": images},
                {"reload": True}, {"watchdog": 200}, {"run": images}]
    expected = golden_blocks(SHIPPED, package, replayed)
    assert [untimed(o["block"], faulted=True) for o in (bad_opcode, over_time)] == expected
    faulted = STATUS_BLOCK.from_bits(int.from_bytes(expected[0], "little"))
    assert faulted.status and faulted.mac_cycles > 0      # the convs before it ran
    assert untimed(restored["block"]) == golden_blocks(SHIPPED, package,
                                                       [{"run": images}])[0]


def test_split_package_under_icarus(tiny_package):
    """STORE_MAP, LOAD_VEC, codebook layers and host stages, with pauses, under Icarus."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (4, *tiny_package.input_shape), dtype=np.uint8)
    result = session(SPLIT, tiny_package, [{"run": images}], simulator="icarus", pause=0.3,
                     seed=2)
    outcome = result["outcomes"][0]
    np.testing.assert_array_equal(outcome["logits"], golden.run(tiny_package, images))
    assert [c.opcode for c in outcome["counters"]] == [
        "LOAD_MAP", "CONV", "POOL", "STORE_MAP", "LOAD_VEC", "DENSE", "DENSE"]


def test_sim_device_splits_a_run_across_simulator_jobs(tiny_package):
    """jobs=2 simulates two contiguous parts in parallel: the logits in order, and the
    exact counters (MAC cycles, skips) add up to those of one run over all images."""
    from velcro.sw.runtime import Accelerator

    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, (5, *tiny_package.input_shape), dtype=np.uint8)
    devices = {}
    for jobs in (1, 2):
        device = Accelerator.open("sim", config=SPLIT, simulator="icarus", pause=0.2,
                                  jobs=jobs)
        device.load(tiny_package)
        np.testing.assert_array_equal(device.run(images), golden.run(tiny_package, images))
        devices[jobs] = device
    assert devices[2].totals["images_done"] == devices[1].totals["images_done"]
    assert devices[1].images == devices[2].images == 5
    for one, two in zip(devices[1].counters(), devices[2].counters(), strict=True):
        assert (two.mac_cycles, two.skipped) == (one.mac_cycles, one.skipped)
    assert devices[2].totals["cycles"] > devices[1].totals["cycles"]  # two runs' fixed cost


def test_a_conv_beyond_the_shipped_buffers_runs_in_tiles_on_the_rtl(conv_package):
    """66 output channels of a 66x66 map (stride 2): 8 kernel calls per batch, one per
    tile, whose joined outputs give the golden model's logits, and whose MAC cycles and
    skips equal the golden kernel model's descriptor by descriptor."""
    rng = np.random.default_rng(4)
    package = conv_package(rng, 2, 66, 66, 2, pool=3)
    (stage, *_) = partition(package, SHIPPED)
    assert len(stage.tiles) == 8
    images = rng.integers(0, 256, (2, *package.input_shape), dtype=np.uint8)
    device = Accelerator.open("sim", simulator="verilator")
    device.load(package)
    np.testing.assert_array_equal(device.run(images), golden.run(package, images))
    reference = Accelerator(GoldenPlatform(SHIPPED), SHIPPED, "golden")
    reference.load(package)
    reference.run(images)
    assert [(c.name, c.mac_cycles, c.skipped) for c in device.counters()] == \
        [(c.name, c.mac_cycles, c.skipped) for c in reference.counters()]
    assert device.totals["mac_cycles"] > 0


@pytest.mark.slow
def test_hundred_footwear_images_under_verilator(footwear):
    package, program = footwear
    images = validation_images(100)
    start = time.perf_counter()
    result = session(SHIPPED, package, [{"run": images}], pause=0.3, seed=3)
    seconds = time.perf_counter() - start
    outcome = result["outcomes"][0]
    assert sha256(outcome["logits"]) == sha256(golden.run(package, images))
    np.testing.assert_array_equal(outcome["logits"], golden.run(package, images))
    check_counters(program, outcome, 100, exact=False)
    print(f"\n100 images, Verilator, pause 0.3: {seconds:.0f} s, "
          f"{result['sim_cycles'] / result['sim_seconds']:.0f} cycles/s, "
          f"{outcome['totals']['cycles'] / 100:.0f} cycles per image")


@pytest.mark.slow
def test_footwear_images_under_icarus_on_a_small_kernel(footwear):
    package, _ = footwear
    images = validation_images(4)
    start = time.perf_counter()
    result = session(SMALL, package, [{"run": images}], simulator="icarus", pause=0.3, seed=4)
    seconds = time.perf_counter() - start
    outcome = result["outcomes"][0]
    assert sha256(outcome["logits"]) == sha256(golden.run(package, images))
    np.testing.assert_array_equal(outcome["logits"], golden.run(package, images))
    print(f"\n{len(images)} images, Icarus, small kernel, pause 0.3: {seconds:.0f} s, "
          f"{result['sim_cycles'] / result['sim_seconds']:.0f} cycles/s")
