"""The one writer of every output, and the strict ``.npz`` reader."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from velcro.sw import files
from velcro.sw.errors import OutputError, PlanError


def test_atomic_write_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "deep" / "out.json"
    files.write_json(target, {"a": 1})
    files.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_previous_file(tmp_path, error):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    with pytest.raises(type(error)), files.atomic_write(target) as f:
        f.write(b"half of the new")
        raise error
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_text_mode_writes_utf8(tmp_path):
    path = files.write_text(tmp_path / "t.txt", "µ-ops\n")
    assert path.read_bytes() == "µ-ops\n".encode()


def test_npz_round_trip_and_strict_header(tmp_path):
    path = tmp_path / "p.npz"
    arrays = {"x": np.arange(6, dtype=np.int16).reshape(2, 3), "m": np.array([True, False])}
    files.write_npz(path, {"format": "velcro-test", "version": 3, "n": 2}, arrays)
    back, header = files.read_npz(path, "velcro-test", 3, PlanError)
    assert header == {"format": "velcro-test", "version": 3, "n": 2}
    assert back.keys() == arrays.keys()
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], value)
        assert back[key].dtype == value.dtype
    with pytest.raises(PlanError, match="not a velcro-plan file"):
        files.read_npz(path, "velcro-plan", 3, PlanError)
    with pytest.raises(PlanError, match="version 3 is not supported"):
        files.read_npz(path, "velcro-test", 1, PlanError)
    with pytest.raises(PlanError, match="does not exist"):
        files.read_npz(tmp_path / "missing.npz", "velcro-test", 3, PlanError)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(PlanError, match="not a readable velcro-test file"):
        files.read_npz(tmp_path / "bad.npz", "velcro-test", 3, PlanError)


def test_npz_with_a_pickled_member_is_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    meta = np.frombuffer(json.dumps({"format": "f", "version": 1}).encode(), np.uint8)
    np.savez(path, meta=meta, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(PlanError, match="not a readable f file"):
        files.read_npz(path, "f", 1, PlanError)


def test_save_figure_writes_the_format_of_the_suffix(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = files.save_figure(fig, tmp_path / "plot.png")
    svg = files.save_figure(fig, tmp_path / "plot.svg")
    plt.close(fig)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:400]


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo"])
def test_a_target_that_is_not_a_regular_file_is_refused_and_left_alone(tmp_path, kind, plant):
    target = tmp_path / "out.json"
    victim = tmp_path / "victim"
    victim.write_text("keep")
    plant(target, kind, victim)
    what = {"symlink": "a symbolic link", "directory": "a directory", "fifo": "a FIFO"}[kind]
    with pytest.raises(OutputError, match=rf"out.json: is {what}, not a regular file; nothing"):
        files.write_json(target, {"a": 1})
    assert victim.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "victim"]


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(tmp_path, monkeypatch):
    import os

    victim = tmp_path / "victim"
    victim.write_text("keep")
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "ab" * n)
    planted = tmp_path / f".out.json.{os.getpid()}.{'ab' * 8}{files.TMP_SUFFIX}"
    planted.symlink_to(victim)
    with pytest.raises(OutputError, match="out.json: cannot write"):
        files.write_json(tmp_path / "out.json", {"a": 1})
    assert victim.read_text() == "keep" and not (tmp_path / "out.json").exists()


def test_os_errors_are_output_errors_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=r"file: is not a folder"):
        files.write_text(blocker / "out.txt", "y")
    with pytest.raises(OutputError, match=r"file: is not a folder"):
        files.write_text(blocker / "deeper" / "out.txt", "y")
    assert issubclass(OutputError, OSError)


def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path):
    """A child limited to 1 KiB per file (RLIMIT_FSIZE) stands in for a full disk."""
    import subprocess
    import sys

    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))\n"
            "from velcro.sw import files\n"
            "from velcro.sw.errors import OutputError\n"
            "try:\n"
            "    files.write_bytes(sys.argv[1], bytes(4096))\n"
            "except OutputError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == f"{target}: cannot write (File too large)"
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]


def test_leftovers_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    import os
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".out.json.{dead.pid}.00ff00ff00ff00ff{files.TMP_SUFFIX}"
    alive = tmp_path / f".out.json.1.00ff00ff00ff00ff{files.TMP_SUFFIX}"
    other = tmp_path / f".other.json.{dead.pid}.00ff00ff00ff00ff{files.TMP_SUFFIX}"
    for p in (leftover, alive, other):
        p.write_text("partial")
    files.write_json(tmp_path / "out.json", [1])
    names = {p.name for p in tmp_path.iterdir()}
    assert leftover.name not in names                   # its process is gone
    assert alive.name in names and other.name in names  # a running pid, another target
    assert os.getpid() > 1


WRITER = """
import sys
from velcro.sw import files
for i in range(int(sys.argv[3])):
    files.write_json(sys.argv[1], {"writer": int(sys.argv[2]), "round": i, "pad": "x" * 20000})
"""


def test_two_writers_and_a_reader_never_see_a_torn_file(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "shared.json"
    files.write_json(target, {"writer": -1, "round": 0, "pad": ""})
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(k), "60"])
             for k in range(2)]
    reads = 0
    while any(p.poll() is None for p in procs) or reads < 50:
        record = json.loads(target.read_text())          # raises on a torn file
        assert record["writer"] in (-1, 0, 1)
        reads += 1
    assert [p.wait() for p in procs] == [0, 0]
    assert json.loads(target.read_text())["round"] == 59
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]


SLOW_WRITER = """
import sys, time
from velcro.sw import files
with files.atomic_write(sys.argv[1]) as f:
    for chunk in range(50):
        f.write(sys.argv[2].encode()[chunk::50])
        time.sleep(0.002)
"""


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["write", "fail", "kill"]),
                              st.binary(min_size=0, max_size=3000),
                              st.sampled_from(["write", "fsync", "replace"]),
                              st.sampled_from([OSError(28, "No space left on device"),
                                               KeyboardInterrupt()]),
                              st.floats(0.0, 0.4)),
                    min_size=1, max_size=6))
def test_the_target_is_always_the_old_or_one_whole_new_content(tmp_path_factory, ops):
    import signal
    import subprocess
    import sys
    import time
    from unittest import mock

    folder = tmp_path_factory.mktemp("writer")
    target = folder / "t.bin"
    current = None
    for op, content, stage, error, delay in ops:
        if op == "write":
            files.write_bytes(target, content)
            current = content
        elif op == "fail":
            patches = {"write": None, "fsync": mock.patch.object(files.os, "fsync",
                                                                  side_effect=error),
                       "replace": mock.patch.object(files.os, "replace", side_effect=error)}
            with pytest.raises(type(error)):
                if stage == "write":
                    with files.atomic_write(target) as f:
                        f.write(content[:len(content) // 2])
                        raise error
                with patches[stage]:
                    files.write_bytes(target, content)
        else:
            text = content.hex()
            child = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target), text])
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
            child.wait()
            # Killed before its rename, the old content; after it, the whole new one.
            seen = target.read_bytes() if target.exists() else None
            assert seen in (current, text.encode())
            current = seen
        seen = target.read_bytes() if target.exists() else None
        assert seen == current
    files.write_bytes(target, b"last")
    assert [p.name for p in folder.iterdir()] == ["t.bin"]
