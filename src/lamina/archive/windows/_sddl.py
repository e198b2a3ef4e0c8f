"""Windows security descriptors: self-relative binary form and SDDL text (pure).

Windows layers carry each file's security descriptor as base64 of its
self-relative binary form (``MSWINDOWS.rawsd``).  People read them as SDDL
(``O:BAG:SYD:PAI(A;OICI;FA;;;BA)``), so :func:`to_sddl` renders one, and
:func:`from_sddl` builds the binary form from SDDL for tools that write
layers (a default descriptor for a converted Linux layer, for instance).

Layout (MS-DTYP §2.4.6): a 20-byte header — revision 1, Sbz1, control
(little-endian u16), offsets of owner, group, SACL and DACL (u32, 0 for
absent) — then the components.  A SID is revision, sub-authority count,
a 6-byte big-endian authority and little-endian u32 sub-authorities; an ACL
is revision, Sbz1, size, ACE count, Sbz2 and the ACEs; an ACE is type,
flags, size, then an access mask and a SID (object ACEs have a flags word
and up to two GUIDs before the SID).

Rendering follows what Windows prints where it is known: a well-known SID
by its two-letter alias, an access mask as a file/registry composite
(``FA``, ``FR``, ``KA``...) when it is exactly one, else as two-letter
rights from the lowest bit up when every bit has one, else in hex; ACE
flags as ``OI CI NP IO ID SA FA``.  Windows' exact choices were not
verified on a Windows host, so the text is for people: the binary form is
what a layer stores and re-emits, never a re-serialisation of the text.
"""

from __future__ import annotations

import re
import struct
import uuid
from dataclasses import dataclass, field

from lamina.errors import InvalidArgumentError

__all__ = [
    "DEFAULT_SDDL",
    "Ace",
    "Acl",
    "SecurityDescriptor",
    "from_sddl",
    "parse_descriptor",
    "sid_from_string",
    "sid_to_string",
    "to_sddl",
]

#: go-containerregistry's descriptor for converted layers: owner and group
#: BUILTIN\\Users, no DACL.
DEFAULT_SDDL = "O:BUG:BU"

SE_OWNER_DEFAULTED = 0x0001
SE_GROUP_DEFAULTED = 0x0002
SE_DACL_PRESENT = 0x0004
SE_DACL_DEFAULTED = 0x0008
SE_SACL_PRESENT = 0x0010
SE_SACL_DEFAULTED = 0x0020
SE_DACL_AUTO_INHERIT_REQ = 0x0100
SE_SACL_AUTO_INHERIT_REQ = 0x0200
SE_DACL_AUTO_INHERITED = 0x0400
SE_SACL_AUTO_INHERITED = 0x0800
SE_DACL_PROTECTED = 0x1000
SE_SACL_PROTECTED = 0x2000
SE_SELF_RELATIVE = 0x8000

_ACE_TYPES = {
    0x00: "A",
    0x01: "D",
    0x02: "AU",
    0x03: "AL",
    0x05: "OA",
    0x06: "OD",
    0x07: "OU",
    0x08: "OL",
    0x09: "XA",
    0x0A: "XD",
    0x0B: "ZA",
    0x0D: "XU",
    0x11: "ML",
    0x12: "RA",
    0x13: "SP",
}
_ACE_CODES = {v: k for k, v in _ACE_TYPES.items()}
_OBJECT_ACE_TYPES = frozenset({0x05, 0x06, 0x07, 0x08, 0x0B, 0x0C, 0x0F, 0x10})

_ACE_FLAGS = [
    ("OI", 0x01),
    ("CI", 0x02),
    ("NP", 0x04),
    ("IO", 0x08),
    ("ID", 0x10),
    ("SA", 0x40),
    ("FA", 0x80),
]

_COMPOSITE_RIGHTS = [
    ("FA", 0x1F01FF),
    ("FR", 0x120089),
    ("FW", 0x120116),
    ("FX", 0x1200A0),
    ("KA", 0xF003F),
    ("KR", 0x20019),
    ("KW", 0x20006),
]
_PARSE_ONLY_RIGHTS = [("KX", 0x20019)]

# Single-bit rights, lowest bit first (the order Windows concatenates them).
_BIT_RIGHTS = [
    ("CC", 0x1),
    ("DC", 0x2),
    ("LC", 0x4),
    ("SW", 0x8),
    ("RP", 0x10),
    ("WP", 0x20),
    ("DT", 0x40),
    ("LO", 0x80),
    ("CR", 0x100),
    ("SD", 0x10000),
    ("RC", 0x20000),
    ("WD", 0x40000),
    ("WO", 0x80000),
    ("GA", 0x10000000),
    ("GX", 0x20000000),
    ("GW", 0x40000000),
    ("GR", 0x80000000),
]
_LABEL_RIGHTS = [("NW", 0x1), ("NR", 0x2), ("NX", 0x4)]

_SID_ALIASES = {
    "AN": "S-1-5-7",
    "AO": "S-1-5-32-548",
    "AU": "S-1-5-11",
    "BA": "S-1-5-32-544",
    "BG": "S-1-5-32-546",
    "BO": "S-1-5-32-551",
    "BU": "S-1-5-32-545",
    "CG": "S-1-3-1",
    "CO": "S-1-3-0",
    "ED": "S-1-5-9",
    "IU": "S-1-5-4",
    "LS": "S-1-5-19",
    "NO": "S-1-5-32-556",
    "NS": "S-1-5-20",
    "NU": "S-1-5-2",
    "PO": "S-1-5-32-550",
    "PS": "S-1-5-10",
    "PU": "S-1-5-32-547",
    "RC": "S-1-5-12",
    "RD": "S-1-5-32-555",
    "RE": "S-1-5-32-552",
    "RU": "S-1-5-32-554",
    "SO": "S-1-5-32-549",
    "SU": "S-1-5-6",
    "SY": "S-1-5-18",
    "WD": "S-1-1-0",
    "WR": "S-1-5-33",
    "OW": "S-1-3-4",
    "AC": "S-1-15-2-1",
    "MU": "S-1-5-32-558",
    "LU": "S-1-5-32-559",
    "IS": "S-1-5-32-568",
    "CY": "S-1-5-32-569",
    "ER": "S-1-5-32-573",
    "RA": "S-1-5-32-575",
    "CD": "S-1-5-32-574",
    "HA": "S-1-5-32-578",
    "AA": "S-1-5-32-579",
    "RM": "S-1-5-32-580",
    "LW": "S-1-16-4096",
    "ME": "S-1-16-8192",
    "MP": "S-1-16-8448",
    "HI": "S-1-16-12288",
    "SI": "S-1-16-16384",
}
_ALIAS_OF_SID = {v: k for k, v in _SID_ALIASES.items()}


def _bad(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"invalid security descriptor: {message}")


# -- SIDs --------------------------------------------------------------------------


def sid_to_string(data: bytes, offset: int = 0) -> tuple[str, int]:
    """The ``S-1-...`` text of the SID at ``offset`` and its length in bytes."""
    if offset + 8 > len(data):
        raise _bad("SID runs past the end")
    revision, count = data[offset], data[offset + 1]
    if revision != 1 or count > 15:
        raise _bad(f"SID revision {revision} with {count} sub-authorities")
    end = offset + 8 + 4 * count
    if end > len(data):
        raise _bad("SID runs past the end")
    authority = int.from_bytes(data[offset + 2 : offset + 8], "big")
    auth_text = str(authority) if authority < 1 << 32 else f"0x{authority:012X}"
    subs = struct.unpack_from(f"<{count}I", data, offset + 8)
    return "-".join(["S", "1", auth_text, *map(str, subs)]), end - offset


def sid_from_string(text: str) -> bytes:
    """Binary SID from ``S-1-...`` text or a two-letter alias."""
    text = _SID_ALIASES.get(text.upper(), text)
    parts = text.split("-")
    if len(parts) < 3 or parts[0].upper() != "S" or parts[1] != "1":
        raise InvalidArgumentError(f"invalid SID {text!r}")
    try:
        auth = int(parts[2], 16) if parts[2].lower().startswith("0x") else int(parts[2])
        subs = [int(p) for p in parts[3:]]
    except ValueError:
        raise InvalidArgumentError(f"invalid SID {text!r}") from None
    if len(subs) > 15 or not 0 <= auth < 1 << 48 or any(not 0 <= s < 1 << 32 for s in subs):
        raise InvalidArgumentError(f"invalid SID {text!r}")
    return bytes([1, len(subs)]) + auth.to_bytes(6, "big") + struct.pack(f"<{len(subs)}I", *subs)


def _sid_text(data: bytes, offset: int) -> tuple[str, int]:
    text, size = sid_to_string(data, offset)
    return _ALIAS_OF_SID.get(text, text), size


# -- model --------------------------------------------------------------------------


@dataclass
class Ace:
    """One access control entry; ``extra`` keeps bytes after the SID verbatim."""

    type: int
    flags: int
    mask: int
    sid: str
    object_type: str = ""
    inherited_object_type: str = ""
    extra: bytes = b""


@dataclass
class Acl:
    """An access control list."""

    revision: int = 2
    aces: list[Ace] = field(default_factory=list)


@dataclass
class SecurityDescriptor:
    """A parsed descriptor; ``dacl``/``sacl`` None means absent, ``Acl`` with
    ``null=True`` semantics is expressed by ``dacl_null``."""

    control: int
    owner: str | None = None
    group: str | None = None
    dacl: Acl | None = None
    sacl: Acl | None = None
    dacl_null: bool = False
    sacl_null: bool = False


def _guid(data: bytes, offset: int) -> str:
    return str(uuid.UUID(bytes_le=bytes(data[offset : offset + 16])))


def _parse_acl(data: bytes, offset: int) -> Acl:
    if offset + 8 > len(data):
        raise _bad("ACL runs past the end")
    revision, _, size, count, _ = struct.unpack_from("<BBHHH", data, offset)
    if offset + size > len(data) or size < 8:
        raise _bad("ACL size out of range")
    acl = Acl(revision)
    pos = offset + 8
    for _ in range(count):
        if pos + 4 > offset + size:
            raise _bad("ACE runs past its ACL")
        ace_type, flags, ace_size = struct.unpack_from("<BBH", data, pos)
        end = pos + ace_size
        if ace_size < 8 or end > offset + size:
            raise _bad("ACE size out of range")
        (mask,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        object_type = inherited = ""
        if ace_type in _OBJECT_ACE_TYPES:
            if body + 4 > end:
                raise _bad("object ACE too short")
            (oflags,) = struct.unpack_from("<I", data, body)
            body += 4
            if oflags & 1:
                object_type = _guid(data, body)
                body += 16
            if oflags & 2:
                inherited = _guid(data, body)
                body += 16
        sid, sid_size = _sid_text(data[:end], body)
        acl.aces.append(
            Ace(
                ace_type,
                flags,
                mask,
                sid,
                object_type,
                inherited,
                bytes(data[body + sid_size : end]),
            )
        )
        pos = end
    return acl


def parse_descriptor(data: bytes) -> SecurityDescriptor:
    """Parse a self-relative security descriptor."""
    if len(data) < 20:
        raise _bad("shorter than its 20-byte header")
    revision, _, control, o_owner, o_group, o_sacl, o_dacl = struct.unpack_from("<BBHIIII", data, 0)
    if revision != 1:
        raise _bad(f"revision {revision}")
    if not control & SE_SELF_RELATIVE:
        raise _bad("not self-relative")
    sd = SecurityDescriptor(control)
    if o_owner:
        sd.owner = _sid_text(data, o_owner)[0]
    if o_group:
        sd.group = _sid_text(data, o_group)[0]
    if control & SE_DACL_PRESENT:
        if o_dacl:
            sd.dacl = _parse_acl(data, o_dacl)
        else:
            sd.dacl_null = True
    if control & SE_SACL_PRESENT:
        if o_sacl:
            sd.sacl = _parse_acl(data, o_sacl)
        else:
            sd.sacl_null = True
    return sd


# -- to text ------------------------------------------------------------------------


def _rights_text(mask: int, ace_type: int) -> str:
    if ace_type == 0x11:
        table = _LABEL_RIGHTS
    else:
        for code, value in _COMPOSITE_RIGHTS:
            if mask == value:
                return code
        table = _BIT_RIGHTS
    letters = []
    rest = mask
    for code, bit in table:
        if rest & bit:
            letters.append(code)
            rest &= ~bit
    if rest or not letters:
        return "0x0" if mask == 0 else f"0x{mask:x}"
    return "".join(letters)


def _ace_text(ace: Ace) -> str:
    type_code = _ACE_TYPES.get(ace.type, f"0x{ace.type:x}")
    flags = "".join(code for code, bit in _ACE_FLAGS if ace.flags & bit)
    unknown_flags = ace.flags & ~sum(bit for _, bit in _ACE_FLAGS)
    if unknown_flags:
        flags += f"0x{unknown_flags:x}"
    fields = [
        type_code,
        flags,
        _rights_text(ace.mask, ace.type),
        ace.object_type,
        ace.inherited_object_type,
        ace.sid,
    ]
    if ace.extra.strip(b"\x00"):
        fields.append("<" + ace.extra.hex() + ">")
    return "(" + ";".join(fields) + ")"


def _acl_text(
    prefix: str, acl: Acl | None, null: bool, control: int, protected: int, req: int, inherited: int
) -> str:
    flags = ""
    if control & protected:
        flags += "P"
    if control & req:
        flags += "AR"
    if control & inherited:
        flags += "AI"
    if null:
        return f"{prefix}:{flags}NO_ACCESS_CONTROL"
    assert acl is not None
    return f"{prefix}:{flags}" + "".join(_ace_text(a) for a in acl.aces)


def to_sddl(data: bytes) -> str:
    """SDDL text of a self-relative security descriptor."""
    sd = parse_descriptor(data)
    parts = []
    if sd.owner is not None:
        parts.append(f"O:{sd.owner}")
    if sd.group is not None:
        parts.append(f"G:{sd.group}")
    if sd.control & SE_DACL_PRESENT:
        parts.append(
            _acl_text(
                "D",
                sd.dacl,
                sd.dacl_null,
                sd.control,
                SE_DACL_PROTECTED,
                SE_DACL_AUTO_INHERIT_REQ,
                SE_DACL_AUTO_INHERITED,
            )
        )
    if sd.control & SE_SACL_PRESENT:
        parts.append(
            _acl_text(
                "S",
                sd.sacl,
                sd.sacl_null,
                sd.control,
                SE_SACL_PROTECTED,
                SE_SACL_AUTO_INHERIT_REQ,
                SE_SACL_AUTO_INHERITED,
            )
        )
    return "".join(parts)


# -- from text ----------------------------------------------------------------------


def _parse_rights(text: str, ace_type: int) -> int:
    t = text.strip()
    if not t:
        return 0
    if t.lower().startswith("0x"):
        try:
            return int(t, 16)
        except ValueError:
            raise InvalidArgumentError(f"invalid access mask {text!r}") from None
    if t.isdigit():
        return int(t)
    table = dict(_COMPOSITE_RIGHTS + _PARSE_ONLY_RIGHTS + _BIT_RIGHTS)
    if ace_type == 0x11:
        table.update(_LABEL_RIGHTS)
    mask = 0
    for i in range(0, len(t), 2):
        code = t[i : i + 2].upper()
        if code not in table:
            raise InvalidArgumentError(f"invalid access right {code!r}")
        mask |= table[code]
    return mask


def _parse_ace(text: str) -> Ace:
    fields = text.split(";")
    if len(fields) < 6:
        raise InvalidArgumentError(f"invalid ACE string ({text})")
    type_code, flag_text, rights, obj, inh, sid = fields[:6]
    if type_code.upper() not in _ACE_CODES:
        raise InvalidArgumentError(f"invalid ACE type {type_code!r}")
    ace_type = _ACE_CODES[type_code.upper()]
    flags = 0
    table = dict(_ACE_FLAGS)
    for i in range(0, len(flag_text), 2):
        code = flag_text[i : i + 2].upper()
        if code not in table:
            raise InvalidArgumentError(f"invalid ACE flag {code!r}")
        flags |= table[code]
    for guid in (obj, inh):
        if guid:
            try:
                uuid.UUID(guid)
            except ValueError:
                raise InvalidArgumentError(f"invalid GUID {guid!r}") from None
    if (obj or inh) and ace_type not in _OBJECT_ACE_TYPES:
        raise InvalidArgumentError(f"GUIDs given for a non-object ACE ({text})")
    sid_from_string(sid)
    return Ace(ace_type, flags, _parse_rights(rights, ace_type), sid, obj.lower(), inh.lower())


def _parse_acl_text(text: str) -> tuple[int, Acl | None]:
    """(control flags, ACL or None for NO_ACCESS_CONTROL)."""
    i = 0
    flags = 0
    while i < len(text) and text[i] != "(":
        if text.startswith("NO_ACCESS_CONTROL", i):
            rest = text[i + len("NO_ACCESS_CONTROL") :]
            if rest:
                raise InvalidArgumentError("ACEs after NO_ACCESS_CONTROL")
            return flags | 0x10000, None
        if text.startswith("P", i):
            flags |= 1
            i += 1
        elif text.startswith("AR", i):
            flags |= 2
            i += 2
        elif text.startswith("AI", i):
            flags |= 4
            i += 2
        else:
            raise InvalidArgumentError(f"invalid ACL flags in {text!r}")
    acl = Acl()
    for match in re.finditer(r"\(([^()]*)\)|(.)", text[i:]):
        if match.group(2) is not None:
            raise InvalidArgumentError(f"invalid ACL text {text!r}")
        acl.aces.append(_parse_ace(match.group(1)))
    if any(a.type in _OBJECT_ACE_TYPES for a in acl.aces):
        acl.revision = 4
    return flags, acl


def _ace_bytes(ace: Ace) -> bytes:
    body = struct.pack("<I", ace.mask)
    if ace.type in _OBJECT_ACE_TYPES:
        oflags = (1 if ace.object_type else 0) | (2 if ace.inherited_object_type else 0)
        body += struct.pack("<I", oflags)
        if ace.object_type:
            body += uuid.UUID(ace.object_type).bytes_le
        if ace.inherited_object_type:
            body += uuid.UUID(ace.inherited_object_type).bytes_le
    body += sid_from_string(ace.sid) + ace.extra
    body += bytes(-(len(body) + 4) % 4)
    return struct.pack("<BBH", ace.type, ace.flags, len(body) + 4) + body


def _acl_bytes(acl: Acl) -> bytes:
    aces = b"".join(_ace_bytes(a) for a in acl.aces)
    return struct.pack("<BBHHH", acl.revision, 0, 8 + len(aces), len(acl.aces), 0) + aces


def from_sddl(text: str) -> bytes:
    """Self-relative binary descriptor for SDDL text (SACL, DACL, owner, group order)."""
    sections = _split_sections("".join(text.split()))
    control = SE_SELF_RELATIVE
    owner = sid_from_string(sections["O"]) if "O" in sections else None
    group = sid_from_string(sections["G"]) if "G" in sections else None
    dacl = sacl = None
    if "D" in sections:
        flags, dacl = _parse_acl_text(sections["D"])
        control |= SE_DACL_PRESENT
        control |= (
            (SE_DACL_PROTECTED if flags & 1 else 0)
            | (SE_DACL_AUTO_INHERIT_REQ if flags & 2 else 0)
            | (SE_DACL_AUTO_INHERITED if flags & 4 else 0)
        )
    if "S" in sections:
        flags, sacl = _parse_acl_text(sections["S"])
        control |= SE_SACL_PRESENT
        control |= (
            (SE_SACL_PROTECTED if flags & 1 else 0)
            | (SE_SACL_AUTO_INHERIT_REQ if flags & 2 else 0)
            | (SE_SACL_AUTO_INHERITED if flags & 4 else 0)
        )
    body = b""
    offsets = [0, 0, 0, 0]  # owner, group, sacl, dacl
    pos = 20
    for index, blob in (
        (2, _acl_bytes(sacl) if sacl else None),
        (3, _acl_bytes(dacl) if dacl else None),
        (0, owner),
        (1, group),
    ):
        if blob is None:
            continue
        offsets[index] = pos
        body += blob
        pos += len(blob)
    return struct.pack("<BBHIIII", 1, 0, control, *offsets) + body


def _split_sections(text: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    depth = 0
    current: str | None = None
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and text[i : i + 2] in ("O:", "G:", "D:", "S:"):
            if current is not None:
                sections[current] = text[start:i]
            current = ch
            if current in sections:
                raise InvalidArgumentError(f"SDDL section {current}: given twice")
            i += 2
            start = i
            continue
        elif current is None:
            raise InvalidArgumentError(f"invalid SDDL {text!r}")
        i += 1
    if current is None or depth != 0:
        raise InvalidArgumentError(f"invalid SDDL {text!r}")
    sections[current] = text[start:]
    return sections
