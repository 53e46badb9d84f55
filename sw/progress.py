"""Progress of long work: a live bar on a terminal, a few plain lines in a log.

:func:`progress` returns a ``tqdm`` bar when standard error is a terminal. Otherwise
(a log file, CI, a pipe) a refreshing bar would land in the log as one line per
refresh, so it returns a quiet counterpart with the same methods that prints one
line when the work ends and at most one every :data:`QUIET_EVERY` seconds before.
"""

from __future__ import annotations

import sys
import time

__all__ = ["QUIET_EVERY", "progress"]

#: Seconds between the lines of a quiet progress.
QUIET_EVERY = 60.0


class _Quiet:
    """The part of ``tqdm``'s interface velcro uses, writing plain lines to stderr."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it"):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = 0
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _line(self, state: str) -> None:
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        postfix = f", {self.postfix}" if self.postfix else ""
        print(f"[velcro] {self.desc}: {count} {self.unit}{postfix}, "
              f"{time.monotonic() - self.start:.1f} s{state}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= QUIET_EVERY:
            self.last = now
            self._line(" ...")

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line("")


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True):
    """A progress bar over ``iterable`` (or updated by hand), or nothing when not
    ``enabled``: ``tqdm`` on a terminal, one plain line per phase otherwise."""
    if not enabled:
        from tqdm import tqdm

        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)
    return _Quiet(iterable, total, desc, unit)
