"""User-facing errors.

Every failure caused by user input (a missing data set, a bad threshold, a model
that does not fit the images) raises :class:`VelcroError` or a subclass. The CLI
prints its message on one line (through :func:`printable`) and exits with code 2;
anything else is a bug.
"""

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text) -> str:
    """``text`` on one line with every control character escaped (``\\n``, ``\\x1b``, ...):
    strings from packages, manifests and file names are shown this way, so they cannot
    move the cursor, recolour the terminal or forge extra lines."""
    names = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return _CONTROL.sub(lambda m: names.get(m.group(0), f"\\x{ord(m.group(0)):02x}"
                        if ord(m.group(0)) < 0x100 else f"\\u{ord(m.group(0)):04x}"), str(text))


class VelcroError(Exception):
    """An error in user input, reported on one line without a traceback."""


class DataError(VelcroError):
    """A data set is missing, corrupt or does not fit the task."""


class ModelError(VelcroError):
    """A model cannot be loaded or does not have the structure a step needs."""


class PlanError(VelcroError):
    """Thresholds, profiles or compression plans are inconsistent or out of range."""


class PackageError(VelcroError):
    """A ``.velcro`` deployment package is unreadable, corrupt or inconsistent."""


class DeviceError(VelcroError):
    """A device is unknown or unavailable, or failed to run a package."""


class VQError(VelcroError):
    """Bad vector-quantization input: a weight matrix or method parameter out of range."""


class ReportError(VelcroError):
    """A result file read by the report is unreadable or not of the shape its writer gives it."""


class ToolError(VelcroError):
    """A build tool (Vivado, v++, Yosys) is missing or failed."""


class OutputError(VelcroError, OSError):
    """An output cannot be written (an unwritable folder, a full disk, a target that is not
    a regular file); the message names the path and the cause."""


class ClusterError(VelcroError):
    """Ray is not installed or not reachable, or a worker died and its work could not be
    done by another one."""
