"""Writing and reading velcro's own files: one writer for every output.

Every file velcro writes (packages, JSON records, plans, profiles, weights, plots,
Verilog and build inputs) goes through :func:`atomic_write`:

- the content goes to a temporary file created exclusively (``O_EXCL``, never through
  a symlink) under an unpredictable name in the target's folder,
  ``.<target>.<pid>.<random>.velcro-tmp``;
- it is flushed and fsynced, and renamed over the target only when the target is
  absent or a regular file: a symlink, directory, FIFO or device at the target is an
  :class:`~velcro.sw.errors.OutputError` naming it, and nothing is written;
- on any failure, an interrupt included, the temporary file is removed and the target
  is left as it was. Two processes writing one target leave one complete file, one of
  their two contents; a reader sees the previous file or a whole new one, never a part;
- temporaries left by a killed process (its pid no longer runs) are removed by the
  next write to the same target.

Operating-system errors (a read-only folder, a full disk, a folder given where a file
is expected) become one-line :class:`~velcro.sw.errors.OutputError` messages that
name the path and the cause.

Profiles and plans are ``.npz`` archives with a JSON header (:func:`write_npz`,
:func:`read_npz`), read without pickles. This module imports only NumPy and the
standard library, so the golden path and the package format can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from .errors import OutputError, VelcroError

__all__ = ["TMP_SUFFIX", "atomic_write", "check_target", "read_npz", "save_figure", "write_bytes",
           "write_json", "write_npz", "write_text"]

#: Suffix of the writer's temporary files.
TMP_SUFFIX = ".velcro-tmp"
# Part of the target's name in a temporary name; keeps it under NAME_MAX (255).
_NAME_CHARS = 120
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _cause(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _not_a_folder(path: Path) -> OutputError:
    """The error for ``path`` below something that is not a folder, naming that thing."""
    blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()),
                   path.parent)
    return OutputError(f"{blocker}: is not a folder; cannot write {path}")


def check_target(path: Path) -> None:
    """Refuse a target that exists and is not a regular file (symlinks are not followed):
    an :class:`~velcro.sw.errors.OutputError` naming it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise _not_a_folder(path) from None
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({_cause(e)})") from None
    for test, kind in _KINDS:
        if test(mode):
            raise OutputError(f"{path}: is {kind}, not a regular file; nothing was written")


def _prefix(path: Path) -> str:
    return f".{path.name[:_NAME_CHARS]}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _clean_leftovers(path: Path) -> None:
    """Remove temporaries of earlier writes to ``path`` whose process no longer runs."""
    pattern = re.compile(re.escape(_prefix(path)) + r"(\d+)\.[0-9a-f]+" + re.escape(TMP_SUFFIX))
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable, where the platform allows it."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path | str, text: bool = False) -> Iterator[IO]:
    """A file object whose content replaces ``path`` when the block ends without error.

    The folder of ``path`` is created if missing. ``text`` opens the file in UTF-8 text
    mode instead of binary. See the module docstring for the guarantees.
    """
    path = Path(path)
    check_target(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _not_a_folder(path) from None
    except OSError as e:
        raise OutputError(f"{folder}: cannot create the folder ({_cause(e)})") from None
    _clean_leftovers(path)
    tmp = folder / f"{_prefix(path)}{os.getpid()}.{secrets.token_hex(8)}{TMP_SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
    except NotADirectoryError:
        raise _not_a_folder(path) from None
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({_cause(e)})") from None
    try:
        with os.fdopen(fd, "w" if text else "wb",
                       **({"encoding": "utf-8"} if text else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        check_target(path)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"{path}: cannot write ({_cause(e)})") from None
        raise
    _sync_folder(folder)


def write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_write(path, text=True) as f:
        f.write(text)
    return Path(path)


def write_json(path: Path | str, record) -> Path:
    """Write ``record`` as indented JSON to ``path`` atomically; returns the path."""
    return write_text(path, json.dumps(record, indent=2) + "\n")


def save_figure(figure, path: Path | str, **options) -> Path:
    """Save a Matplotlib ``figure`` to ``path`` atomically, in the format its suffix names
    (PNG without one); ``options`` go to ``savefig``."""
    path = Path(path)
    with atomic_write(path) as f:
        figure.savefig(f, format=path.suffix[1:] or "png", **options)
    return path


def write_npz(path: Path | str, header: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` and the JSON ``header`` (as the ``meta`` member) as a compressed
    ``.npz``, atomically."""
    meta = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with atomic_write(path) as f:
        np.savez_compressed(f, meta=meta, **arrays)
    return Path(path)


def read_npz(path: Path | str, fmt: str, version: int,
             error: type[VelcroError] = VelcroError) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and header of an ``.npz`` written by :func:`write_npz`.

    Read strictly (no pickles); the header must name ``fmt`` and ``version``. Anything
    else raises ``error`` with a message naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        header = json.loads(arrays.pop("meta").tobytes().decode())
    except Exception as e:  # zipfile, zlib, numpy and json each raise their own types
        raise error(f"{path}: not a readable {fmt} file ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != fmt:
        raise error(f"{path}: not a {fmt} file")
    if header.get("version") != version:
        raise error(f"{path}: {fmt} version {header.get('version')!r} is not supported "
                    f"(expected {version})")
    return arrays, header
