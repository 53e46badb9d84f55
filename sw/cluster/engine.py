"""Connecting to Ray: ``--ray auto|local:N|ADDRESS``, and the knobs every worker shares.

``local:N`` starts a Ray instance on this machine with ``N`` CPUs (stopped again when the
command ends); ``auto`` joins the cluster this machine is a node of (``ray start`` ran
here); anything else is the address of a cluster's head (``host:6379`` or
``ray://host:10001``). When Ray is already initialised in this process (a program using
the Python API, the tests) that instance is used as it is and left running.

Every task and actor of :mod:`velcro.sw.cluster` runs torch with a fixed number of
intra-op threads (:data:`THREADS` unless told otherwise), so that its floating-point
results do not depend on the machine it lands on.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import ClusterError

#: Torch intra-op threads of every task and actor (one CPU each).
THREADS = 1
#: Object store of a local instance: the images and models of one run, not a cache.
LOCAL_OBJECT_STORE = 256 << 20


def import_ray():
    """The ``ray`` module, or a :class:`ClusterError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray and --workers need Ray, which is not installed; "
                           "install velcro[ray]") from None
    return ray


def parse_address(spec: str) -> tuple[str, str | int]:
    """``("local", N)``, ``("auto", "auto")`` or ``("address", spec)`` for ``--ray``."""
    spec = (spec or "").strip()
    if not spec:
        raise ClusterError("--ray is empty; give auto, local:N or a cluster address")
    if spec == "auto":
        return "auto", "auto"
    if spec.startswith("local"):
        match = re.fullmatch(r"local:(\d+)", spec)
        if not match or int(match.group(1)) < 1:
            raise ClusterError(f"--ray {spec!r}: a local instance is local:N with N >= 1 CPUs")
        return "local", int(match.group(1))
    if any(c.isspace() for c in spec):
        raise ClusterError(f"--ray {spec!r} is not an address (host:port or ray://host:port)")
    return "address", spec


@dataclass
class Cluster:
    """A connected Ray: how many CPUs it offers, and whether this process started it."""

    spec: str
    cpus: int
    started: bool

    @property
    def workers(self) -> int:
        """Parallel tasks it can run at one CPU each (at least 1)."""
        return max(1, self.cpus)


@contextlib.contextmanager
def connect(spec: str) -> Iterator[Cluster]:
    """Connect to (or start) the Ray named by ``spec`` for the duration of the block."""
    ray = import_ray()
    kind, value = parse_address(spec)
    started = False
    if not ray.is_initialized():
        options = {"include_dashboard": False, "logging_level": "ERROR",
                   "configure_logging": True}
        try:
            if kind == "local":
                ray.init(num_cpus=value, object_store_memory=LOCAL_OBJECT_STORE, **options)
            else:
                ray.init(address=value, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"cannot connect to Ray at {spec!r}: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                               ) from None
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        yield Cluster(spec, cpus, started)
    finally:
        if started:
            ray.shutdown()


def set_threads(threads: int | None) -> None:
    """Torch intra-op threads of this worker (None: leave them)."""
    if threads is not None:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def remote_cause(error: BaseException) -> BaseException:
    """The exception a Ray task raised, unwrapped from Ray's ``RayTaskError``."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def reraise_user_error(error: BaseException) -> None:
    """Raise a worker's :class:`~velcro.sw.errors.VelcroError` again in the driver, as the
    same class with the same one-line message; anything else is left to the caller."""
    from ..errors import VelcroError

    cause = remote_cause(error)
    if isinstance(cause, VelcroError):
        raise type(cause)(str(cause)) from None
