"""How the image-level commands print: Docker's tables, sizes, ages and short ids.

People read ``lamina images`` next to ``docker images`` and scripts parse
both, so the shapes follow Docker's (go-units ``HumanSize`` and
``HumanDuration``, a tabwriter with three spaces between columns, 12-hex
short ids).  Pure string work: no store, no click.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "created_datetime",
    "created_text",
    "human_duration",
    "human_size",
    "iso_created",
    "json_text",
    "layer_key",
    "newest_first_key",
    "plain",
    "short_id",
    "split_name",
    "table",
]

_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_FRACTION = re.compile(r"(\.\d{6})\d+")


def human_size(size: int | float | None) -> str:
    """``4.26MB``: decimal units with three significant digits, as ``docker images`` shows."""
    if size is None:
        return "-"
    value = float(size)
    unit = 0
    while value >= 1000.0 and unit < len(_DECIMAL_UNITS) - 1:
        value /= 1000.0
        unit += 1
    return f"{value:.3g}{_DECIMAL_UNITS[unit]}"


def human_duration(seconds: float) -> str:
    """go-units ``HumanDuration``, step for step: ``About a minute``, ``3 hours``, ``2 weeks``."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def created_datetime(value: object) -> _dt.datetime | None:
    """An image's or container's ``created`` as an aware datetime (None when unknown).

    Configs carry RFC 3339 text, often with Go's nanoseconds, which Python's
    parser does not take: the fraction is cut to microseconds first.
    """
    if value is None or value == "":
        return None
    if isinstance(value, _dt.datetime):
        moment = value
    elif isinstance(value, (int, float)):
        moment = _dt.datetime.fromtimestamp(value, _dt.UTC)
    elif isinstance(value, str):
        try:
            moment = _dt.datetime.fromisoformat(_FRACTION.sub(r"\1", value))
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return moment


_EPOCH = _dt.datetime(1, 1, 1, tzinfo=_dt.UTC)


def newest_first_key(value: object) -> _dt.datetime:
    """A sort key for ``created`` (reverse it for newest first; unknown sorts last)."""
    return created_datetime(value) or _EPOCH


def created_text(value: object, now: _dt.datetime | None = None) -> str:
    """``2 weeks ago`` for a table's CREATED column (``N/A`` when the image does not say)."""
    moment = created_datetime(value)
    if moment is None:
        return "N/A"
    now = now or _dt.datetime.now(_dt.UTC)
    age = (now - moment).total_seconds()
    if age < 0:
        return "Less than a second ago"  # a clock ahead of ours: not "in the future"
    return human_duration(age) + " ago"


def iso_created(value: object) -> str | None:
    """``created`` for JSON output: RFC 3339 text, as the config said it when it was text."""
    if isinstance(value, str):
        return value or None
    moment = created_datetime(value)
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def short_id(identifier: str) -> str:
    """The 12-hex form Docker prints: ``sha256:`` dropped, then the first 12 digits."""
    return identifier.partition(":")[2][:12] if ":" in identifier else identifier[:12]


def split_name(name: object) -> tuple[str, str, str | None]:
    """``(repository, tag, digest)`` of a stored name, the repository in Docker's short form.

    The tag is ``<none>`` for a name pinned only by digest.  A name that does
    not parse (a store written by another tool) is shown as it is.
    """
    from lamina.oci import parse_reference

    text = str(name)
    try:
        ref = parse_reference(text, default_tag=False)
    except Exception:
        return text, "<none>", None
    return (
        ref.familiar_name,
        ref.tag if ref.tag is not None else "<none>",
        None if ref.digest is None else str(ref.digest),
    )


def layer_key(layer: object) -> str:
    """The chain ID of an image's layer entry, whether the store hands Layers or ids."""
    return str(getattr(layer, "chain_id", layer))


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell plus three spaces; the last column is not padded."""
    all_rows = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(header))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[i] + 3) for i, cell in enumerate(row[:-1])]
        lines.append(("".join(cells) + row[-1]).rstrip())
    return "\n".join(lines)


def plain(value: Any) -> Any:
    """``value`` with read-only mappings and tuples (a frozen config) as dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """Indented JSON for ``inspect`` and ``--format json`` (non-ASCII kept as it is)."""
    return json.dumps(plain(value), indent=4, ensure_ascii=False, default=str)
