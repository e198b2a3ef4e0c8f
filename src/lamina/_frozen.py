"""Immutable value classes without ``dataclasses``.

``@dataclass(frozen=True)`` would do, but importing :mod:`dataclasses` pulls in
:mod:`inspect` and more: milliseconds that every lamina process would pay at
start-up for a handful of small records.  A value class lists its fields in
``__slots__`` and ``_fields``, sets them in ``__init__`` with
``object.__setattr__``, and gets equality, hashing, repr and pickling here.
"""

from __future__ import annotations

__all__ = ["Frozen"]


class Frozen:
    """Immutable value object: equality, hash, repr and pickling over ``_fields``."""

    __slots__: tuple[str, ...] = ()
    _fields: tuple[str, ...] = ()  # constructor order, for equality, repr and pickling

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__ or not isinstance(other, Frozen):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"

    def as_dict(self) -> dict[str, object]:
        """The fields by name (what ``dataclasses.asdict`` gives for flat classes)."""
        return dict(zip(self._fields, self._values(), strict=True))

    def __reduce__(self) -> tuple[type[Frozen], tuple[object, ...]]:
        return (type(self), self._values())
