"""Strict JSON in, canonical JSON out: the one reader and writer for every document.

Reading (:func:`load_object`)
    Image documents arrive from archives and registries, so they are
    untrusted.  The reader refuses what Go's ``encoding/json`` and Python's
    :mod:`json` would read differently or what no image tool writes:
    duplicate keys (two parsers may keep different values: a parser
    differential), ``NaN``/``Infinity`` (not JSON), invalid UTF-8, nesting
    deeper than :data:`MAX_DEPTH` (real documents nest four or five levels;
    a deeper one would later blow Python's recursion limit when written),
    and a top level that is not an object (or array, for ``manifest.json``).
    Errors are :class:`lamina.errors.InvalidArchiveError` naming the document.

Writing (:func:`canonical_json`)
    Documents lamina creates are written in the OCI spec's recommended
    canonical form: keys sorted, no insignificant whitespace, UTF-8 (not
    ``\\u`` escapes).  Their digest then depends on their content only.  A
    document that was *received* is never re-serialised: its digest is the
    digest of the bytes as they came, and the store keeps those bytes.

Size limits
    A document is read whole into memory, so every reader has a ceiling and
    a caller reads at most ``limit + 1`` bytes before handing them over:
    :data:`MAX_DOCUMENT_SIZE` (4 MiB) for manifests, indexes and configs, the
    limit containers/image applies to each and the size the distribution
    spec asks registries to accept; :data:`MAX_INDEX_FILE_SIZE` (16 MiB) for
    an archive's ``manifest.json``, ``index.json`` and ``repositories``,
    which grow with the number of images and tags saved together.  Past the
    limit is :class:`lamina.errors.ArchiveTooLargeError`.

Field readers (:func:`get_str` and friends) check one field's type and say
which document and field were wrong, since "KeyError: 'digest'" helps nobody.
"""

from __future__ import annotations

import json

from lamina.errors import ArchiveTooLargeError, InvalidArchiveError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_SIZE",
    "MAX_INDEX_FILE_SIZE",
    "canonical_json",
    "get_int",
    "get_list",
    "get_object",
    "get_str",
    "get_str_map",
    "load_json",
    "load_object",
]

MAX_DOCUMENT_SIZE = 4 << 20
MAX_INDEX_FILE_SIZE = 16 << 20
MAX_DEPTH = 64

_MISSING = object()


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def load_json(
    data: bytes | bytearray | memoryview, what: str, limit: int = MAX_DOCUMENT_SIZE
) -> object:
    """Parse ``data`` as strict JSON; :class:`InvalidArchiveError` naming ``what``."""
    if len(data) > limit:
        raise ArchiveTooLargeError(f"{what} is larger than {limit} bytes")
    try:
        text = bytes(data).decode("utf-8")
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidArchiveError(f"{what} is not valid JSON: {exc}") from None
    _check_depth(value, what)
    return value


def _check_depth(value: object, what: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` (an explicit stack: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            raise InvalidArchiveError(f"{what} nests deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def load_object(
    data: bytes | bytearray | memoryview, what: str, limit: int = MAX_DOCUMENT_SIZE
) -> dict[str, object]:
    """Parse ``data`` as a JSON object."""
    value = load_json(data, what, limit)
    if not isinstance(value, dict):
        raise InvalidArchiveError(f"{what} is not a JSON object")
    return value


def canonical_json(value: object) -> bytes:
    """``value`` as canonical JSON bytes: sorted keys, compact, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _field(data: Mapping[str, object], key: str, what: str, required: bool) -> object:
    value = data.get(key, _MISSING)
    if value is _MISSING and required:
        raise InvalidArchiveError(f"{what}: missing field {key!r}")
    return value


def get_str(
    data: Mapping[str, object], key: str, what: str, *, required: bool = False
) -> str | None:
    """A string field, ``None`` when absent and optional."""
    value = _field(data, key, what, required)
    if value is _MISSING:
        return None
    if not isinstance(value, str):
        raise InvalidArchiveError(f"{what}: field {key!r} must be a string")
    return value


def get_int(
    data: Mapping[str, object], key: str, what: str, *, required: bool = False
) -> int | None:
    """An integer field (``true`` is not an integer here)."""
    value = _field(data, key, what, required)
    if value is _MISSING:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArchiveError(f"{what}: field {key!r} must be an integer")
    return value


def get_list(
    data: Mapping[str, object], key: str, what: str, *, required: bool = False
) -> list[object] | None:
    """An array field; ``null`` reads as absent (Go writes nil slices as ``null``)."""
    value = _field(data, key, what, required)
    if value is _MISSING or (value is None and not required):
        return None
    if not isinstance(value, list):
        raise InvalidArchiveError(f"{what}: field {key!r} must be an array")
    return value


def get_object(
    data: Mapping[str, object], key: str, what: str, *, required: bool = False
) -> dict[str, object] | None:
    """An object field; ``null`` reads as absent."""
    value = _field(data, key, what, required)
    if value is _MISSING or (value is None and not required):
        return None
    if not isinstance(value, dict):
        raise InvalidArchiveError(f"{what}: field {key!r} must be an object")
    return value


def get_str_map(data: Mapping[str, object], key: str, what: str) -> dict[str, str]:
    """An optional object of string values (annotations, labels); empty when absent."""
    value = get_object(data, key, what)
    if value is None:
        return {}
    if not all(isinstance(item, str) for item in value.values()):
        raise InvalidArchiveError(f"{what}: every value of {key!r} must be a string")
    return {k: str(v) for k, v in value.items()}
