"""The one exception tree of lamina.

Callers test the class, never the message::

    LaminaError
    ├── NotSupportedError            the driver or feature cannot work here
    │   ├── PrerequisitesError       a kernel or tool prerequisite is missing
    │   ├── IncompatibleFilesystemError   the backing filesystem cannot hold this driver
    │   └── QuotaNotSupportedError   no quota mechanism for a ``size`` option
    ├── NotFoundError                no such layer (or file in a layer)
    ├── AlreadyExistsError           a layer with that id exists
    ├── InUseError                   the layer is mounted, held, being applied to, or has children
    │   └── LockTimeoutError         another process kept the layer's lock past the timeout
    ├── InvalidArgumentError         a bad id, option or storage option
    ├── MaxDepthError                the chain is deeper than the driver can stack
    ├── QuotaExceededError           a write went past a layer's size limit
    ├── ArchiveError                 a layer tar could not be applied
    │   ├── InvalidArchiveError      malformed, truncated or unsupported input
    │   │   └── ArchiveTooLargeError decompression or size limit exceeded (a "bomb")
    │   └── UnsafeArchiveError       the tar tried to reach outside the layer
    └── StateError                   the on-disk state is inconsistent (run cleanup)

``NotSupportedError`` is what automatic driver selection skips, like Docker's
``IsDriverNotSupported``; every other error from a driver's start-up is fatal.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "ArchiveError",
    "ArchiveTooLargeError",
    "InUseError",
    "IncompatibleFilesystemError",
    "InvalidArchiveError",
    "InvalidArgumentError",
    "LaminaError",
    "LockTimeoutError",
    "MaxDepthError",
    "NotFoundError",
    "NotSupportedError",
    "PrerequisitesError",
    "QuotaExceededError",
    "QuotaNotSupportedError",
    "StateError",
    "UnsafeArchiveError",
]


class LaminaError(Exception):
    """Base of every error lamina raises on purpose.

    ``errno`` carries the operating-system error number when one caused it,
    so callers can still tell ENOSPC from EDQUOT without parsing text.
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class NotSupportedError(LaminaError):
    """The driver or the requested feature cannot work on this machine."""


class PrerequisitesError(NotSupportedError):
    """A prerequisite (kernel feature, privilege, tool) is missing."""


class IncompatibleFilesystemError(NotSupportedError):
    """The backing filesystem cannot hold this driver's layers."""


class QuotaNotSupportedError(NotSupportedError):
    """A ``size`` storage option was given but no quota mechanism exists here."""


class NotFoundError(LaminaError):
    """The layer (or the named file in it) does not exist."""


class AlreadyExistsError(LaminaError):
    """A layer with this id already exists."""


class InUseError(LaminaError):
    """The layer is still mounted, referenced, or released more than acquired."""


class LockTimeoutError(InUseError):
    """Another process held the layer's lock (an apply, a remove) for longer than we wait.

    A subclass of :class:`InUseError` because that is what it means to the
    caller (exit 7 from the CLI): the layer is busy; retrying later is right.
    """


class InvalidArgumentError(LaminaError):
    """An id, option or storage option is malformed or unknown."""


class MaxDepthError(LaminaError):
    """The parent chain is deeper than this driver can stack."""


class QuotaExceededError(LaminaError):
    """A write went past the layer's size limit."""


class ArchiveError(LaminaError):
    """A layer tar could not be applied or produced."""


class InvalidArchiveError(ArchiveError):
    """The tar stream is malformed, truncated or uses something we refuse."""


class ArchiveTooLargeError(InvalidArchiveError):
    """The stream expands past the configured limit (a decompression bomb)."""


class UnsafeArchiveError(ArchiveError):
    """An entry tried to reach outside the layer root (``..``, links, devices)."""


class StateError(LaminaError):
    """The on-disk state is inconsistent; ``cleanup`` may repair it."""
