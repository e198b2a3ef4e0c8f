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
    │   ├── UnsafeArchiveError       the tar tried to reach outside the layer
    │   └── LayerChangedError        a file was replaced or resized while it was exported
    ├── IntegrityError               bytes do not match their digest or declared size
    ├── RegistryError                the registry failed or refused a request
    │   └── AuthenticationError      401/403: no, wrong or insufficient credentials
    └── StateError                   the on-disk state is inconsistent (run cleanup)
        └── ReadOnlyStoreError       a write to a store on a read-only filesystem

``NotSupportedError`` is what automatic driver selection skips, like Docker's
``IsDriverNotSupported``; every other error from a driver's start-up is fatal.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "ArchiveError",
    "ArchiveTooLargeError",
    "AuthenticationError",
    "InUseError",
    "IncompatibleFilesystemError",
    "IntegrityError",
    "InvalidArchiveError",
    "InvalidArgumentError",
    "LaminaError",
    "LayerChangedError",
    "LockTimeoutError",
    "MaxDepthError",
    "NotFoundError",
    "NotSupportedError",
    "PrerequisitesError",
    "QuotaExceededError",
    "QuotaNotSupportedError",
    "ReadOnlyStoreError",
    "RegistryError",
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


class LayerChangedError(ArchiveError):
    """A listed file was replaced or changed size while its layer was being exported.

    A running container can rename a symlink, a device node or a FIFO over a
    file the export has listed, swap a directory for a symlink, or write to
    a file being read.  The tar cannot hold what was listed (its header may
    be out already), and following what was swapped in would export host
    data, so the export stops; exporting again gives a consistent tar once
    the writer is done.  ``path`` is the entry's path in the layer.
    """

    def __init__(self, message: str, *, path: str, errno: int | None = None) -> None:
        super().__init__(message, errno=errno)
        self.path = path


class IntegrityError(LaminaError):
    """A blob, manifest or stored layer whose bytes do not match their digest or size.

    Not an :class:`ArchiveError`: the same mismatch comes from a registry, a
    blob store or a damaged layer on disk, and callers treat it alike (discard,
    refetch or repair), whatever carried the bytes.
    """


class RegistryError(LaminaError):
    """The registry failed or refused a request (an HTTP or protocol error)."""


class AuthenticationError(RegistryError):
    """401 or 403: no credentials, wrong ones, or too few rights for the request."""


class StateError(LaminaError):
    """The on-disk state is inconsistent; ``cleanup`` may repair it."""


class ReadOnlyStoreError(StateError):
    """The store is on a read-only filesystem: it answers queries, but cannot be changed.

    Carries ``errno.EROFS``.  A :class:`StateError` because the store cannot
    take the write as it is; remounting it read-write, not ``cleanup``, helps.
    """
