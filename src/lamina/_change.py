"""The change record shared by the archive engine and the drivers."""

from __future__ import annotations

import enum

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


class Change:
    """One changed path, absolute within the layer (``/etc/passwd``).

    Ordering is Docker's ``checkChanges`` order: by path bytes, then kind.
    Immutable, hashable and ordered like the frozen, ordered dataclass it
    replaces; written out because ``dataclasses`` (and ``inspect`` behind
    it) would cost every lamina process more than the rest of this module.
    """

    __slots__ = ("kind", "path")
    __match_args__ = ("path", "kind")

    path: str
    kind: ChangeKind

    def __init__(self, path: str, kind: ChangeKind) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "kind", kind)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: Change is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: Change is immutable")

    def __reduce__(self) -> tuple[type[Change], tuple[str, ChangeKind]]:
        return (Change, (self.path, self.kind))

    def __repr__(self) -> str:
        return f"Change(path={self.path!r}, kind={self.kind!r})"

    def __str__(self) -> str:
        return f"{self.kind.letter} {self.path}"

    def __hash__(self) -> int:
        return hash((self.path, self.kind))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__ or not isinstance(other, Change):
            return NotImplemented
        return self.path == other.path and self.kind == other.kind

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
