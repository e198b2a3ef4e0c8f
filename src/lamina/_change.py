"""The change record shared by the archive engine and the drivers."""

from __future__ import annotations

import enum

from lamina._frozen import Frozen

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


class Change(Frozen):
    """One changed path, absolute within the layer (``/etc/passwd``).

    Ordering is Docker's ``checkChanges`` order: by path bytes, then kind.
    Immutable, hashable and ordered like the frozen, ordered dataclass it
    replaces (see :mod:`lamina._frozen` for why it is not one).
    """

    __slots__ = ("kind", "path")
    __match_args__ = _fields = ("path", "kind")

    path: str
    kind: ChangeKind

    def __init__(self, path: str, kind: ChangeKind) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "kind", kind)

    def __str__(self) -> str:
        return f"{self.kind.letter} {self.path}"

    def __lt__(self, other: Change) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.path, self.kind) < (other.path, other.kind)

    def __le__(self, other: Change) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.path, self.kind) <= (other.path, other.kind)

    def __gt__(self, other: Change) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.path, self.kind) > (other.path, other.kind)

    def __ge__(self, other: Change) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.path, self.kind) >= (other.path, other.kind)
