"""Size strings the way Docker reads them (go-units ``RAMInBytes``), pure.

``--storage-opt size=50M`` means 50 MiB: every unit letter is binary
(k = 1024, m = 1024², ... p = 1024⁵), optionally followed by ``b`` or
``ib`` in any case; a bare number is bytes and fractions are truncated after
scaling ("1.5k" is 1536).  Following go-units, a single space may separate
the number from the unit, and negative sizes are refused.
"""

from __future__ import annotations

import re

from lamina.errors import InvalidArgumentError

__all__ = ["ram_in_bytes"]

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_INT64_MAX = (1 << 63) - 1


def ram_in_bytes(text: str) -> int:
    """Parse ``"50M"``, ``"1.5 GiB"``, ``"4096"`` into bytes (InvalidArgumentError if bad)."""
    sep = max(text.rfind(c) for c in "0123456789. ")
    if sep < 0:
        raise InvalidArgumentError(f"invalid size: {text!r}")
    if text[sep] == " ":
        number, suffix = text[:sep], text[sep + 1 :]
    else:
        number, suffix = text[: sep + 1], text[sep + 1 :]
    if not _NUMBER.fullmatch(number):
        raise InvalidArgumentError(f"invalid size: {text!r}")
    value = float(number)
    if suffix:
        sfx = suffix.lower()
        if len(sfx) > 3:
            raise InvalidArgumentError(f"invalid suffix: {suffix!r}")
        if sfx[0] == "b":
            if len(sfx) > 1:
                raise InvalidArgumentError(f"invalid suffix: {suffix!r}")
        else:
            multiplier = _UNITS.get(sfx[0])
            if (
                multiplier is None
                or (len(sfx) == 2 and sfx[1] != "b")
                or (len(sfx) == 3 and sfx[1:] != "ib")
            ):
                raise InvalidArgumentError(f"invalid suffix: {suffix!r}")
            value *= multiplier
    if value != value or value > _INT64_MAX:
        raise InvalidArgumentError(f"size out of range: {text!r}")
    return int(value)
