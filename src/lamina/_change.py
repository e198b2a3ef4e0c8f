"""The change record shared by the archive engine and the drivers."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Change", "ChangeKind"]


class ChangeKind(enum.IntEnum):
    """What happened to a path; the values are Docker's API values."""

    MODIFY = 0
    ADD = 1
    DELETE = 2

    @property
    def letter(self) -> str:
        """The ``docker diff`` letter: C, A or D."""
        return "CAD"[self.value]


@dataclass(frozen=True, order=True)
class Change:
    """One changed path, absolute within the layer (``/etc/passwd``).

    Ordering is Docker's ``checkChanges`` order: by path bytes, then kind.
    """

    path: str
    kind: ChangeKind

    def __str__(self) -> str:
        return f"{self.kind.letter} {self.path}"
