"""The command line against bad input, hostile packages and a hostile file system.

Every case runs ``velcro`` as a subprocess and checks the exit code, a one-line message
and no traceback; where a command fails, an output that existed before is byte-identical
afterwards.
"""

import argparse
import io
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from velcro.sw.cli import build_parser, main
from velcro.sw.export.package import MANIFEST, MANIFEST_SHA256, load, manifest_seal

ROOT = Path(__file__).resolve().parents[2]


def velcro(*argv, cwd=None, env=None, preexec=None, timeout=600):
    """Run ``velcro ARGV`` in a fresh Python; returns the completed process."""
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "velcro.sw.cli", *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd, env=full_env,
                          preexec_fn=preexec, timeout=timeout)


def fails(result, pattern: str, code: int = 2) -> str:
    """Assert a clean failure: the exit code, no traceback, and one message line matching
    ``pattern``, the last on stderr (progress lines of work done before may precede it)."""
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("[velcro] ") for line in lines[:-1]), result.stderr
    assert re.search(pattern, lines[-1]), lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def package(footwear_package, tmp_path_factory):
    """A private copy of the footwear package."""
    path = tmp_path_factory.mktemp("pkg") / "footwear.velcro"
    shutil.copy(footwear_package, path)
    return path


def rewrite_manifest(src: Path, dst: Path, change, reseal: bool = True) -> None:
    """Copy a package, applying ``change(manifest)`` to its manifest and (as an attacker
    can) ``reseal``-ing its checksum."""
    with zipfile.ZipFile(src) as zin:
        files = {info.filename: zin.read(info) for info in zin.infolist()}
    manifest = json.loads(files[MANIFEST])
    change(manifest)
    files[MANIFEST] = json.dumps(manifest).encode()
    if reseal:
        files[MANIFEST_SHA256] = manifest_seal(files[MANIFEST])
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name, data in files.items():
            zout.writestr(name, data)


# --- a package never runs code --------------------------------------------------------

def test_a_manifest_naming_a_module_with_side_effects_runs_nothing(package, tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "evil_model.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\ndef make():\n    raise SystemExit(3)\n")
    hostile = tmp_path / "hostile.velcro"

    def change(m):
        m["source"].update(model="evil_model:make", weights=str(tmp_path / "w.safetensors"),
                           data=str(tmp_path))
    rewrite_manifest(package, hostile, change)
    result = velcro("run", "--package", hostile, "--images", "20",
                    env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    unsealed = tmp_path / "unsealed.velcro"
    rewrite_manifest(package, unsealed, change, reseal=False)
    fails(velcro("run", "--package", unsealed, "--images", "20",
                 env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path),
          r"manifest.sha256: does not match manifest.json")
    assert not marker.exists()


def test_a_copied_package_runs_without_the_code_or_data_that_made_it(package, tmp_path):
    copy = tmp_path / "elsewhere" / "p.velcro"
    copy.parent.mkdir()
    shutil.copy(package, copy)
    ran = velcro("run", "--package", copy, "--images", "30", "--json", tmp_path / "a.json",
                 cwd=copy.parent)
    assert ran.returncode == 0, ran.stderr
    velcro("run", "--package", package, "--images", "30", "--json", tmp_path / "b.json")
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["predictions_sha256"] == b["predictions_sha256"] and a["images"] == 30
    assert "float_accuracy" not in a
    manifest = json.loads(zipfile.ZipFile(package).read("manifest.json"))
    assert not any(str(v).startswith("/") for v in manifest["source"].values())


def test_strings_from_a_package_are_printed_escaped(package, tmp_path):
    tricky = tmp_path / "tricky.velcro"
    rewrite_manifest(package, tricky,
                     lambda m: m["task"].update(name="shoes\x1b[31m\nforged line"))
    result = velcro("run", "--package", tricky, "--images", "5")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert "shoes\\x1b[31m\\nforged line on golden" in result.stdout


def test_the_float_comparison_checks_the_parameters(package, tmp_path):
    import torch
    from safetensors.torch import save_file

    from velcro.sw.models import load_reference

    model = load_reference()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc2.bias"] += 1.0
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(other))
    fails(velcro("run", "--package", package, "--images", "5", "--weights", other),
          r"differs from the one the package was exported from")
    state["fc2.bias"][0] = float("nan")
    save_file({k: v.contiguous() for k, v in state.items()}, str(other))
    fails(velcro("run", "--package", package, "--images", "5", "--weights", other),
          r"fc2.bias' holds NaN")
    assert torch.isfinite(model.fc2.bias).all()


# --- one writer for every output ------------------------------------------------------

@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_a_target_that_is_not_a_regular_file_is_named(package, tmp_path, kind, plant):
    target = tmp_path / "out.json"
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    plant(target, kind, victim)
    result = velcro("run", "--package", package, "--images", "5", "--json", target)
    fails(result, r"out.json: is a .*not a regular file")
    assert "accuracy" in result.stdout          # the figures are on stdout all the same
    assert victim.read_text() == "precious"


PLANTING = """
import os, sys
from velcro.sw import files
from velcro.sw.cli import main
files.secrets.token_hex = lambda n: "ab" * n     # the name an attacker predicted
target, victim = sys.argv[1], sys.argv[2]
folder, name = os.path.split(target)
os.symlink(victim, os.path.join(folder, f".{name}.{os.getpid()}.{'ab' * 8}.velcro-tmp"))
sys.exit(main(sys.argv[3:]))
"""


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(package, tmp_path):
    target, victim = tmp_path / "out.json", tmp_path / "victim"
    victim.write_text("precious")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", PLANTING, str(target), str(victim), "run",
                             "--package", str(package), "--images", "5", "--json",
                             str(target)], capture_output=True, text=True, env=env)
    fails(result, r"out.json: cannot write \(File exists\)")
    assert victim.read_text() == "precious" and not target.exists()


def test_a_report_target_that_is_not_a_regular_file_keeps_the_old_report(package, tmp_path):
    results, out = tmp_path / "results", tmp_path / "report"
    results.mkdir()
    assert velcro("run", "--package", package, "--images", "5", "--json",
                  results / "run.json").returncode == 0
    assert velcro("report", "--results", results, "--out", out).returncode == 0
    before = (out / "index.html").read_bytes()
    (out / "report.md").unlink()
    (out / "report.md").mkdir()
    fails(velcro("report", "--results", results, "--out", out),
          r"report.md: is a directory, not a regular file")
    assert (out / "index.html").read_bytes() == before


def test_a_file_where_a_folder_should_be(package, tmp_path):
    (tmp_path / "file").write_text("x")
    fails(velcro("run", "--package", package, "--images", "5", "--json",
                 tmp_path / "file" / "out.json"), r"file: is not a folder")
    fails(velcro("export", "--task", "footwear", "--out", tmp_path / "file" / "p.velcro"),
          r"file: is not a folder")


def test_a_full_disk_keeps_the_previous_output(package, tmp_path):
    out = tmp_path / "run.json"
    out.write_text('{"old": true}\n')

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
    result = velcro("run", "--package", package, "--images", "5", "--json", out,
                    preexec=small_files)
    fails(result, r"run.json: cannot write \(File too large\)")
    assert out.read_text() == '{"old": true}\n'
    assert "accuracy" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_package_export_into_a_full_disk_keeps_the_previous_package(package, tmp_path):
    out = tmp_path / "p.velcro"
    shutil.copy(package, out)
    before = out.read_bytes()

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    fails(velcro("export", "--task", "footwear", "--out", out, preexec=small_files),
          r"p.velcro: cannot write \(File too large\)")
    assert out.read_bytes() == before


# --- inputs that cannot give a meaningful result --------------------------------------

def image_folder(root: Path, per_class: int, size=(28, 28)) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(
                root / name / f"{i}.png")
    return root


def png_header(width: int, height: int) -> bytes:
    """A PNG file that declares ``width x height`` pixels (PIL reads only its header)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))


def test_a_preprocessing_split_too_small_for_variances_is_refused(tmp_path):
    folder = image_folder(tmp_path / "imgs", 30)
    out = tmp_path / "c.json"
    fails(velcro("compress", "--data", folder, "--thresholds", "10,10,10,10", "--json", out),
          r"preprocessing split \(2 %\) holds 1; .* at least 8 .* at least 400 images")
    assert not out.exists()


@pytest.mark.parametrize("size", ["100000,100000", "0,0", "28", "a,b", "-3,28"])
def test_image_sizes_out_of_bounds_are_refused_before_allocating(tmp_path, size):
    folder = image_folder(tmp_path / "imgs", 2)
    start = time.perf_counter()
    fails(velcro("profile", "--data", folder, f"--image-size={size}", "--out",
                 tmp_path / "p.npz"), r"--image-size must be H,W")
    assert time.perf_counter() - start < 120
    assert not (tmp_path / "p.npz").exists()


def test_a_decompression_bomb_is_refused(tmp_path):
    folder = image_folder(tmp_path / "imgs", 2)
    (folder / "a" / "bomb.png").write_bytes(png_header(30000, 30000))
    fails(velcro("profile", "--data", folder, "--image-size", "28,28", "--out",
                 tmp_path / "p.npz"), r"bomb.png: too large to decode safely")


def test_nan_weights_are_refused(tmp_path):
    from safetensors.torch import save_file

    from velcro.sw.models import load_reference

    state = {k: v.clone().contiguous() for k, v in load_reference().state_dict().items()}
    state["conv2.weight"][0, 0, 0, 0] = float("inf")
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    fails(velcro("profile", "--task", "footwear", "--weights", bad, "--out", tmp_path / "p"),
          r"'conv2.weight' holds NaN or infinite values")


@pytest.mark.parametrize("argv, pattern", [
    (["compress", "--task", "footwear", "--classes", "1,2", "--thresholds", "1,1,1,1"],
     r"--task or --classes, not both"),
    (["compress", "--task", "footwear", "--thresholds", ""], r"--thresholds is empty"),
    (["export", "--task", "footwear", "--thresholds", "", "--out", "x.velcro"],
     r"--thresholds is empty"),
    (["compress", "--task", "footwear", "--thresholds", "nan,1,1,1"], r"finite numbers"),
    (["compress", "--task", "footwear", "--image-size", "0,28", "--thresholds", "1,1,1,1"],
     r"--image-size must be H,W with each side in \[1, 4096\], not 0,28"),
    (["compress", "--task", "footwear", "--model", "no_such_module_x:build", "--weights",
      "w.safetensors", "--thresholds", "1,1,1,1"], r"PYTHONPATH or give the file"),
    (["compress", "--task", "footwear", "--model", "missing.py:build", "--weights",
      "w.safetensors", "--thresholds", "1,1,1,1"], r"--model file missing.py does not exist"),
])
def test_inconsistent_or_empty_options_are_refused(tmp_path, argv, pattern):
    fails(velcro(*argv, cwd=tmp_path), pattern)
    assert list(tmp_path.iterdir()) == []


def test_a_model_given_as_a_file_path_is_imported(tmp_path):
    (tmp_path / "net.py").write_text(
        "from velcro.sw.models import reference_cnn\ndef build():\n    return reference_cnn()\n")
    from velcro.sw.models import REFERENCE_WEIGHTS

    result = velcro("compress", "--task", "footwear", "--model", tmp_path / "net.py:build",
                    "--weights", REFERENCE_WEIGHTS, "--thresholds", "10,10,10,10",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "footwear: C = " in result.stdout
    # Not a terminal: one plain progress line per phase, no refreshing bar.
    from velcro.sw.data import make_task

    n = len(make_task("footwear").splits().preprocessing)
    assert "\r" not in result.stderr and f"[velcro] profiling: {n}/{n} img" in result.stderr
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".json", ".npz")]


# --- the shipped weights are never overwritten ----------------------------------------

def test_train_without_out_writes_to_the_user_folder(tmp_path, monkeypatch, capsys):
    from velcro.sw import train

    seen = {}
    monkeypatch.setenv("VELCRO_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(train, "train_network", lambda name, epochs, seed, out: seen.update(
        name=name, out=out) or {"test_accuracy": 0.5, "train_seconds": 1.0})
    assert main(["train", "--epochs", "1"]) == 0
    assert seen["out"] == tmp_path / "home" / "reference.safetensors"
    assert "--weights" in capsys.readouterr().out
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "w.safetensors")]) == 0
    assert seen["out"] == tmp_path / "w.safetensors"
    assert main(["train", "--model", "small_resnet", "--epochs", "1"]) == 0
    assert seen == {"name": "small_resnet", "out": tmp_path / "home" / "small_resnet.safetensors"}
    assert "--model small_resnet --weights" in capsys.readouterr().out
    assert main(["train", "--model", "resnet999"]) == 2
    assert "unknown network 'resnet999'" in capsys.readouterr().err


# --- interrupts -----------------------------------------------------------------------

@pytest.mark.parametrize("delay", [0.5, 2.0, 6.0])
def test_ctrl_c_at_any_moment_is_a_clean_exit_130(tmp_path, delay):
    out = tmp_path / "c.json"
    out.write_text("previous\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child = subprocess.Popen([sys.executable, "-m", "velcro.sw.cli", "compress", "--task",
                              "footwear", "--search", "--json", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    time.sleep(delay)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    fails(subprocess.CompletedProcess([], child.returncode, "", err), r"^velcro: interrupted$",
          code=130)
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


# --- everyday use ---------------------------------------------------------------------

def test_version():
    result = velcro("--version")
    assert result.returncode == 0 and re.fullmatch(r"velcro \d+\.\d+\.\d+\S*\n", result.stdout)


def test_every_option_has_help():
    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif action.option_strings and not action.help:
                missing.append(" ".join([*path, action.option_strings[0]]))
    walk(build_parser(), ["velcro"])
    assert missing == []


def test_stdout_holds_the_summary_even_when_writing_fails(package, tmp_path):
    result = velcro("run", "--package", package, "--images", "5", "--json", tmp_path)
    fails(result, r"is a directory, not a regular file")
    first = result.stdout.splitlines()[0]
    assert re.match(r"footwear on golden: accuracy \d+\.\d\d% on 5 images", first)
    assert load(package).C > 0
    # The summary, the partition and round-trip lines, nothing more: no "wrote" line.
    assert io.StringIO(result.stdout).read().count("\n") == 3
    assert result.stdout.splitlines()[1].startswith("partition: 9 of 9 layers on the kernel")
    assert result.stdout.splitlines()[2].startswith("round trips: 1 kernel call(s)")


def test_two_commands_writing_one_json_leave_one_complete_record(package, tmp_path):
    """Two ``velcro run`` processes write the same ``--json`` while a reader polls it: every
    read is a complete record of one of them, and the last one standing is complete."""
    out = tmp_path / "run.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    writers = [subprocess.Popen([sys.executable, "-m", "velcro.sw.cli", "run", "--package",
                                 str(package), "--images", str(n), "--json", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env)
               for n in (7, 11)]
    seen = set()
    while any(w.poll() is None for w in writers):
        try:
            text = out.read_text()
        except FileNotFoundError:
            continue
        seen.add(json.loads(text)["images"])
    for w in writers:
        assert w.wait() == 0, w.stderr.read()
    assert seen <= {7, 11}
    assert json.loads(out.read_text())["images"] in (7, 11)
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
