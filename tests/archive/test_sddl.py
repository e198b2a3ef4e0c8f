"""Security descriptors: binary <-> SDDL on known descriptors."""

from __future__ import annotations

import base64
import struct

import pytest

from lamina.archive.windows import from_sddl, parse_descriptor, sid_from_string, to_sddl
from lamina.errors import InvalidArgumentError

GGCR_USERS = "AQAAgBQAAAAkAAAAAAAAAAAAAAABAgAAAAAABSAAAAAhAgAAAQIAAAAAAAUgAAAAIQIAAA=="
IMGUTIL_ADMINS = "AQAAgBQAAAAkAAAAAAAAAAAAAAABAgAAAAAABSAAAAAgAgAAAQIAAAAAAAUgAAAAIAIAAA=="
TRUSTED_INSTALLER = "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"


def test_go_containerregistry_default_is_users() -> None:
    assert to_sddl(base64.b64decode(GGCR_USERS)) == "O:BUG:BU"
    assert from_sddl("O:BUG:BU") == base64.b64decode(GGCR_USERS)


def test_imgutil_admin_default() -> None:
    assert to_sddl(base64.b64decode(IMGUTIL_ADMINS)) == "O:BAG:BA"
    assert from_sddl("O:BAG:BA") == base64.b64decode(IMGUTIL_ADMINS)


def _sid(text: str) -> bytes:
    parts = [int(p) for p in text.split("-")[2:]]
    return (
        bytes([1, len(parts) - 1])
        + parts[0].to_bytes(6, "big")
        + struct.pack(f"<{len(parts) - 1}I", *parts[1:])
    )


def _ace(type_: int, flags: int, mask: int, sid: str) -> bytes:
    body = struct.pack("<I", mask) + _sid(sid)
    return struct.pack("<BBH", type_, flags, 4 + len(body)) + body


def test_dacl_with_several_aces_built_by_hand() -> None:
    """A typical Windows system file descriptor, laid out by hand from MS-DTYP."""
    aces = (
        _ace(0, 0, 0x1F01FF, TRUSTED_INSTALLER)
        + _ace(0, 0x10, 0x1200A9, "S-1-5-32-544")
        + _ace(0, 0x0B, 0x10000000, "S-1-3-0")
        + _ace(1, 0, 0x40000, "S-1-1-0")
    )
    dacl = struct.pack("<BBHHH", 2, 0, 8 + len(aces), 4, 0) + aces
    owner, group = _sid(TRUSTED_INSTALLER), _sid("S-1-5-18")
    control = (
        0x8000 | 0x0004 | 0x1000 | 0x0400
    )  # self-relative, DACL present, protected, auto-inherited
    sd = struct.pack("<BBHIIII", 1, 0, control, 20 + len(dacl), 20 + len(dacl) + len(owner), 0, 20)
    sd += dacl + owner + group
    text = to_sddl(sd)
    assert text == (
        f"O:{TRUSTED_INSTALLER}G:SYD:PAI(A;;FA;;;{TRUSTED_INSTALLER})(A;ID;0x1200a9;;;BA)"
        "(A;OICIIO;GA;;;CO)(D;;WD;;;WD)"
    )
    parsed = parse_descriptor(from_sddl(text))
    assert parsed.dacl is not None and [a.mask for a in parsed.dacl.aces] == [
        0x1F01FF,
        0x1200A9,
        0x10000000,
        0x40000,
    ]
    assert to_sddl(from_sddl(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "D:NO_ACCESS_CONTROL",
        "O:SYG:SYD:(A;OICI;FR;;;BU)(A;;FW;;;AU)(A;;FX;;;WD)S:AI(AU;SAFA;FA;;;WD)",
        "O:BAD:P(A;;KA;;;BA)(A;;GXGR;;;BU)",
        "D:(OA;;RP;bf967aba-0de6-11d0-a285-00aa003049e2;;AU)",
        "S:(ML;;NW;;;HI)",
    ],
)
def test_round_trips(text: str) -> None:
    assert to_sddl(from_sddl(text)) == text


def test_malformed_input() -> None:
    for bad in (b"", b"\x02" + bytes(19), bytes(20)):
        with pytest.raises(InvalidArgumentError):
            to_sddl(bad)
    for text in ("O:", "X:BA", "D:(Z;;FA;;;BA)", "O:S-1-5-x", "D:(A;;QQ;;;BA)"):
        with pytest.raises(InvalidArgumentError):
            from_sddl(text)
    assert sid_from_string("BU") == sid_from_string("S-1-5-32-545")
