"""User-namespace style id mapping for layer contents (Docker's idtools idea).

A layer tar carries container ids; on a host with a remapped store they are
shifted into a subordinate range.  The map is a list of ranges, like
``/proc/self/uid_map``: (container id, host id, size).
"""

from __future__ import annotations

from collections.abc import Sequence

from lamina._frozen import Frozen
from lamina.errors import InvalidArchiveError

__all__ = ["IDMap", "IDRange"]


class IDRange(Frozen):
    """``size`` ids starting at ``container_id`` map to ids starting at ``host_id``."""

    __slots__ = ("container_id", "host_id", "size")
    __match_args__ = _fields = ("container_id", "host_id", "size")

    container_id: int
    host_id: int
    size: int

    def __init__(self, container_id: int, host_id: int, size: int) -> None:
        object.__setattr__(self, "container_id", container_id)
        object.__setattr__(self, "host_id", host_id)
        object.__setattr__(self, "size", size)


def _translate(ranges: Sequence[IDRange], value: int, to_host: bool) -> int:
    if not ranges:
        return value
    for r in ranges:
        src, dst = (r.container_id, r.host_id) if to_host else (r.host_id, r.container_id)
        if src <= value < src + r.size:
            return dst + (value - src)
    side = "host" if to_host else "container"
    raise InvalidArchiveError(f"id {value} cannot be mapped to a {side} id")


class IDMap(Frozen):
    """Separate uid and gid ranges; empty means identity."""

    __slots__ = ("gids", "uids")
    __match_args__ = _fields = ("uids", "gids")

    uids: tuple[IDRange, ...]
    gids: tuple[IDRange, ...]

    def __init__(self, uids: tuple[IDRange, ...] = (), gids: tuple[IDRange, ...] = ()) -> None:
        object.__setattr__(self, "uids", uids)
        object.__setattr__(self, "gids", gids)

    @property
    def is_identity(self) -> bool:
        """True when no ranges are set, so nothing needs translating."""
        return not self.uids and not self.gids

    def to_host(self, uid: int, gid: int) -> tuple[int, int]:
        """Container ids (from a tar) to host ids (on disk)."""
        return _translate(self.uids, uid, True), _translate(self.gids, gid, True)

    def to_container(self, uid: int, gid: int) -> tuple[int, int]:
        """Host ids (on disk) to container ids (in an exported tar)."""
        return _translate(self.uids, uid, False), _translate(self.gids, gid, False)

    def root_pair(self) -> tuple[int, int]:
        """The host ids of container root, which owns implied directories."""
        return self.to_host(0, 0)

    @classmethod
    def parse(cls, spec: str) -> IDMap:
        """Parse ``"0:100000:65536"`` (same map for uids and gids), ranges comma-separated."""
        ranges = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            try:
                c, h, s = (int(x) for x in part.split(":"))
            except ValueError as exc:
                raise ValueError(f"bad id map range {part!r}: want container:host:size") from exc
            ranges.append(IDRange(c, h, s))
        return cls(tuple(ranges), tuple(ranges))
