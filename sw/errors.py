"""User-facing errors.

Every failure caused by user input (a missing data set, a bad threshold, a model
that does not fit the images) raises :class:`VelcroError` or a subclass. The CLI
prints its message on one line and exits with code 2; anything else is a bug.
"""


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


class ReportError(VelcroError):
    """A result file read by the report is unreadable or not of the shape its writer gives it."""


class ToolError(VelcroError):
    """A build tool (Vivado, v++, Yosys) is missing or failed."""
