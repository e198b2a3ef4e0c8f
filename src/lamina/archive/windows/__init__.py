"""Windows image layers: their tar format, Go-exact writer, security descriptors, conversion.

The face of the Windows layer format (pure: no drivers, no store); the
windowsfilter driver and ``lamina windows`` import only from here.

* **reading**: :class:`RawTarReader` keeps every raw byte that is not file
  content (byte-exact re-export); :func:`classify` turns a header into a
  :class:`WinEntry`; :class:`LayerValidator` checks the ordering rules of
  Windows' importer; :func:`fold` is a name's case-insensitive identity;
* **writing**: :class:`GoTarWriter` and the header builders
  (:func:`basic_info_header`, :func:`stream_header`,
  :func:`whiteout_header`) write what Go's ``archive/tar`` plus go-winio's
  ``backuptar`` write, byte for byte;
* **security descriptors**: :func:`from_sddl` / :func:`to_sddl` between SDDL
  text and the binary form, :data:`DEFAULT_SDDL` for converted layers;
* **conversion**: :func:`convert_linux_layer` makes a Windows layer of a
  Linux one that the windowsfilter driver accepts.

Names load on first use (PEP 562).
"""

from __future__ import annotations

from lamina._lazy import lazy_names

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from lamina.archive.windows._convert import (
        convert_linux_layer,
    )
    from lamina.archive.windows._reader import (
        BLOCK,
        HEADER_ONLY_TYPES,
        MAX_SPECIAL_FILE,
        RawHeader,
        RawTarReader,
        parse_pax_records,
        parse_pax_time,
    )
    from lamina.archive.windows._sddl import (
        DEFAULT_SDDL,
        Ace,
        Acl,
        SecurityDescriptor,
        from_sddl,
        parse_descriptor,
        sid_from_string,
        sid_to_string,
        to_sddl,
    )
    from lamina.archive.windows._tar import (
        C_ISDIR,
        C_ISLNK,
        C_ISREG,
        FILE_ATTRIBUTE_ARCHIVE,
        FILE_ATTRIBUTE_DIRECTORY,
        FILE_ATTRIBUTE_READONLY,
        FILE_ATTRIBUTE_REPARSE_POINT,
        MUTATED_FILES,
        PAX_CREATIONTIME,
        PAX_FILEATTR,
        PAX_MOUNTPOINT,
        PAX_RAWSD,
        PAX_SD,
        PAX_XATTR_PREFIX,
        EntryKind,
        GoHeader,
        GoTarWriter,
        LayerValidator,
        WinEntry,
        basic_info_header,
        classify,
        filetime_to_ns,
        fold,
        format_pax_time,
        linux_symlink_target,
        ns_to_filetime,
        stream_header,
        whiteout_header,
        windows_link_target,
    )

__all__ = [
    "BLOCK",
    "C_ISDIR",
    "C_ISLNK",
    "C_ISREG",
    "DEFAULT_SDDL",
    "FILE_ATTRIBUTE_ARCHIVE",
    "FILE_ATTRIBUTE_DIRECTORY",
    "FILE_ATTRIBUTE_READONLY",
    "FILE_ATTRIBUTE_REPARSE_POINT",
    "HEADER_ONLY_TYPES",
    "MAX_SPECIAL_FILE",
    "MUTATED_FILES",
    "PAX_CREATIONTIME",
    "PAX_FILEATTR",
    "PAX_MOUNTPOINT",
    "PAX_RAWSD",
    "PAX_SD",
    "PAX_XATTR_PREFIX",
    "Ace",
    "Acl",
    "EntryKind",
    "GoHeader",
    "GoTarWriter",
    "LayerValidator",
    "RawHeader",
    "RawTarReader",
    "SecurityDescriptor",
    "WinEntry",
    "basic_info_header",
    "classify",
    "convert_linux_layer",
    "filetime_to_ns",
    "fold",
    "format_pax_time",
    "from_sddl",
    "linux_symlink_target",
    "ns_to_filetime",
    "parse_descriptor",
    "parse_pax_records",
    "parse_pax_time",
    "sid_from_string",
    "sid_to_string",
    "stream_header",
    "to_sddl",
    "whiteout_header",
    "windows_link_target",
]

# public name -> the module that defines it
_LAZY = {
    "Ace": "lamina.archive.windows._sddl",
    "Acl": "lamina.archive.windows._sddl",
    "BLOCK": "lamina.archive.windows._reader",
    "C_ISDIR": "lamina.archive.windows._tar",
    "C_ISLNK": "lamina.archive.windows._tar",
    "C_ISREG": "lamina.archive.windows._tar",
    "DEFAULT_SDDL": "lamina.archive.windows._sddl",
    "EntryKind": "lamina.archive.windows._tar",
    "FILE_ATTRIBUTE_ARCHIVE": "lamina.archive.windows._tar",
    "FILE_ATTRIBUTE_DIRECTORY": "lamina.archive.windows._tar",
    "FILE_ATTRIBUTE_READONLY": "lamina.archive.windows._tar",
    "FILE_ATTRIBUTE_REPARSE_POINT": "lamina.archive.windows._tar",
    "GoHeader": "lamina.archive.windows._tar",
    "GoTarWriter": "lamina.archive.windows._tar",
    "HEADER_ONLY_TYPES": "lamina.archive.windows._reader",
    "LayerValidator": "lamina.archive.windows._tar",
    "MAX_SPECIAL_FILE": "lamina.archive.windows._reader",
    "MUTATED_FILES": "lamina.archive.windows._tar",
    "PAX_CREATIONTIME": "lamina.archive.windows._tar",
    "PAX_FILEATTR": "lamina.archive.windows._tar",
    "PAX_MOUNTPOINT": "lamina.archive.windows._tar",
    "PAX_RAWSD": "lamina.archive.windows._tar",
    "PAX_SD": "lamina.archive.windows._tar",
    "PAX_XATTR_PREFIX": "lamina.archive.windows._tar",
    "RawHeader": "lamina.archive.windows._reader",
    "RawTarReader": "lamina.archive.windows._reader",
    "SecurityDescriptor": "lamina.archive.windows._sddl",
    "WinEntry": "lamina.archive.windows._tar",
    "basic_info_header": "lamina.archive.windows._tar",
    "classify": "lamina.archive.windows._tar",
    "convert_linux_layer": "lamina.archive.windows._convert",
    "filetime_to_ns": "lamina.archive.windows._tar",
    "fold": "lamina.archive.windows._tar",
    "format_pax_time": "lamina.archive.windows._tar",
    "from_sddl": "lamina.archive.windows._sddl",
    "linux_symlink_target": "lamina.archive.windows._tar",
    "ns_to_filetime": "lamina.archive.windows._tar",
    "parse_descriptor": "lamina.archive.windows._sddl",
    "parse_pax_records": "lamina.archive.windows._reader",
    "parse_pax_time": "lamina.archive.windows._reader",
    "sid_from_string": "lamina.archive.windows._sddl",
    "sid_to_string": "lamina.archive.windows._sddl",
    "stream_header": "lamina.archive.windows._tar",
    "to_sddl": "lamina.archive.windows._sddl",
    "whiteout_header": "lamina.archive.windows._tar",
    "windows_link_target": "lamina.archive.windows._tar",
}

__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
