"""Apply a layer tar into a directory: the hottest path of lamina.

Confinement.  Every entry name is split into plain components (``..`` that
would climb above the root is refused) and its parent directory is reached
beneath the root's descriptor without following any symlink.  Where the
kernel has ``openat2`` (Linux >= 5.6) a parent two or more levels below a
cached directory is opened with one ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS)`` call (the default); otherwise, and for a single
level, one component at a time with ``O_NOFOLLOW | O_DIRECTORY`` (the
fallback: the same rule, enforced by us instead of the kernel).  An entry
that would write through a symlink on disk is refused with
:class:`~lamina.errors.UnsafeArchiveError`, and every create, link, chown,
chmod and utime is relative to that parent descriptor.  Hardlink targets
are resolved the same way.  Symlink targets are stored verbatim: they are
data, and nothing here ever follows them.

Cost.  Parent descriptors are cached by path, so a regular file costs one
``openat`` (``O_CREAT|O_EXCL``), its writes, ``futimens`` and ``close``;
``fchown`` only when the owner differs from what creation gives, and
``fchmod`` only when the umask or special bits require it (the same for a
new directory; one that already existed gets both).  Input that is a plain
file is read with ``pread`` into a 1 MiB buffer that headers and small
bodies are sliced from, and large bodies go from file to file by
``sendfile``.  Directory times are set after all entries, as Docker does.
Cached descriptors inside a directory are closed before it is removed, so
none points at a deleted one, and the cache is trimmed only between
entries, so none is closed while an entry still uses it.  Trees are removed
by :mod:`lamina._tree` (iteratively, with a bounded number of descriptors,
whatever their depth), the remover every driver uses.

Helpers.  A layer's regular files (after the first ``helper_after``, or
all of them for a big compressed layer file) are created by helper
processes (``_file_writer``) while this process goes on parsing; it waits
for them (a barrier) before anything that removes, replaces or links a path
this layer made or a helper may be making, before merging into a directory
when unprivileged, and before setting directory times.  A file whose name
holds a directory from before the apply is this process's to make.

Input.  The stream is decompressed here, never by a tool from the layer.
It is read on past the tar's end-of-archive marker (up to 8 MiB) to its
end, so a compressed stream's trailer and checksum are verified, and a
compressed layer must contain that marker: a zstd stream cut short ends
without an error, and the marker is what tells a complete layer from a
truncated one.  Plain tars may omit it, as Go's reader allows.

Semantics follow Docker's ``UnpackLayer`` and the OCI layer spec: an
existing entry is replaced unless both are directories (then merged);
``.wh.<name>`` deletes ``name``; ``.wh..wh..opq`` empties its directory of
everything not unpacked from this same layer; other ``.wh..wh.*`` names at
the root are AUFS metadata and skipped.  In overlay mode whiteouts are kept
in overlayfs form instead (0:0 character device, ``trusted.overlay.opaque``).
The returned size is Docker's: the sum of the header sizes of all entries.

Deliberate differences from Docker, each safer: the root entry (``./``) is
skipped (as go-archive does) rather than re-moding the target; xattrs in the
``trusted.overlay.`` / ``user.overlay.`` namespaces are dropped (they are
overlayfs's private metadata, not layer content); AUFS hardlink stashes
(``.wh..wh.plnk``) are not supported and links into them are refused.
"""

from __future__ import annotations

import errno
import io
import os
import stat

from lamina._frozen import Frozen
from lamina._tree import remove_tree_at
from lamina.archive import _openat2
from lamina.archive._compression import Compression, detect_compression, open_decompressed
from lamina.archive._file_writer import FileWriter, WriterError, can_fork_writer
from lamina.archive._idmap import IDMap
from lamina.archive._paths import split_entry_name
from lamina.archive._tarreader import (
    TYPE_BLK,
    TYPE_CHR,
    TYPE_DIR,
    TYPE_FIFO,
    TYPE_LINK,
    TYPE_REG,
    TYPE_SYMLINK,
    TarEntry,
    TarReader,
)
from lamina.archive._whiteout import (
    OPAQUE_MARKER,
    OVERLAY_OPAQUE_XATTR,
    WHITEOUT_META_PREFIX,
    WHITEOUT_PREFIX,
    WhiteoutFormat,
)
from lamina.errors import (
    ArchiveError,
    InvalidArchiveError,
    LaminaError,
    NotSupportedError,
    UnsafeArchiveError,
)

# ``typing`` is for the checker only: importing it at run time (``re`` and more
# behind it) adds milliseconds to every process that applies a layer.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

__all__ = ["ApplyOptions", "apply_layer"]

_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_TAIL = 8 << 20  # bytes read after the end-of-archive marker, at most
_MAX_CACHED_DIRS = 512
#: Resolve uncached parents two or more levels below a cached one with one
#: openat2 call instead of a per-component walk (the default where the kernel has
#: it).  Turned off for good, process-wide, the first time the kernel refuses it.
use_openat2 = _openat2.AVAILABLE
_PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
#: Regular files applied before the rest go to helper processes (see
#: ``_file_writer``); None never starts them.  A smaller layer is not worth the fork.
helper_after: int | None = 256
#: A compressed layer file at least this big starts its helpers before decoding
#: begins (gzip decodes in a thread, and a process with threads must not fork).
_EARLY_HELPERS = 4 << 20
#: Bodies up to this size travel to a helper in its message (input that is not a
#: plain file); a bigger one the applier writes itself.
_SHIPPED_BODY_MAX = 16 << 10
#: How many helpers: the kernel's work of creating files is what they share out.
helpers = max(1, min(4, os.cpu_count() or 1))


class ApplyOptions(Frozen):
    """How to apply a layer.

    ``whiteouts``: OCI applies ``.wh.`` entries as deletions in a full tree;
    OVERLAY keeps them as overlayfs whiteouts (0:0 char devices, opaque xattr)
    in an upper directory.  ``chown``: None means "when running as root".
    ``devices``: None means create device nodes when privileged and skip them
    (documented) otherwise; True requires them (error when impossible); False
    refuses layers that contain any.
    ``max_bytes`` caps the uncompressed stream size (bomb protection); None
    means no cap: the caller (a driver, the store) sets one for untrusted input.
    """

    __slots__ = ("best_effort_xattrs", "chown", "devices", "id_map", "max_bytes", "whiteouts")
    __match_args__ = _fields = (
        "id_map",
        "whiteouts",
        "best_effort_xattrs",
        "chown",
        "devices",
        "max_bytes",
    )

    id_map: IDMap
    whiteouts: WhiteoutFormat
    best_effort_xattrs: bool
    chown: bool | None
    devices: bool | None
    max_bytes: int | None

    def __init__(
        self,
        id_map: IDMap | None = None,
        whiteouts: WhiteoutFormat = WhiteoutFormat.OCI,
        best_effort_xattrs: bool = False,
        chown: bool | None = None,
        devices: bool | None = None,
        max_bytes: int | None = None,
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "id_map", IDMap() if id_map is None else id_map)
        set_field(self, "whiteouts", whiteouts)
        set_field(self, "best_effort_xattrs", best_effort_xattrs)
        set_field(self, "chown", chown)
        set_field(self, "devices", devices)
        set_field(self, "max_bytes", max_bytes)


def apply_layer(
    stream: BinaryIO, dest: str | os.PathLike[str], options: ApplyOptions | None = None
) -> int:
    """Extract a layer tar (plain, gzip or zstd) into ``dest``; returns Docker's layer size."""
    opts = options or ApplyOptions()
    plain: BinaryIO | None = None
    applier = _Applier(os.fspath(dest), opts)
    try:
        try:
            start = _plain_file_offset(stream)
            if start is None:
                if applier.helper_countdown >= 0 and _file_size(stream) >= _EARLY_HELPERS:
                    applier.start_helpers()  # now: a decoder's thread would forbid forking
                plain, compression = open_decompressed(stream, limit=opts.max_bytes)
                reader = TarReader(plain)
            else:
                compression = Compression.NONE
                applier.layer_fd = stream.fileno()
                reader = TarReader.over_file(stream.fileno(), start, limit=opts.max_bytes)
        except OSError as exc:  # the caller's stream failed on its first read
            raise ArchiveError(f"reading the layer failed: {exc}", errno=exc.errno) from exc
        try:
            size = applier.run(reader)
            if compression is not Compression.NONE and not reader.saw_end_marker:
                raise InvalidArchiveError(
                    "truncated layer: the compressed stream ended before the tar's end marker"
                )
            # Read on to the end, so a decoder checks the stream's trailer and checksum;
            # a real tar has at most a blocking record of zeros after its end marker,
            # so a long tail is not decoded just to be thrown away.
            reader.read_tail(_MAX_TAIL)
            if plain is None:
                stream.seek(reader.input_offset)  # as if read through the stream
            return size
        except LaminaError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidArchiveError(f"name too long: {exc}", errno=exc.errno) from exc
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                what = "no space left" if exc.errno == errno.ENOSPC else "disk quota exceeded"
                raise ArchiveError(
                    f"applying layer failed: {what} on the layer's filesystem ({exc})",
                    errno=exc.errno,
                ) from exc
            raise ArchiveError(f"applying layer failed: {exc}", errno=exc.errno) from exc
    finally:
        applier.close()  # helpers first: stopped and reaped
        if plain is not None:
            plain.close()


def _file_size(stream: BinaryIO) -> int:
    """The size of the regular file behind ``stream``; 0 when there is none."""
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _plain_file_offset(stream: BinaryIO) -> int | None:
    """Where an uncompressed tar starts in ``stream``, when it is a plain regular file.

    Only a file object as :func:`open` makes it qualifies (not a subclass or a
    wrapper that might count or hash what is read through it): then the tar
    is read from its descriptor directly and large bodies are copied by the
    kernel.  None means "read through the stream".
    """
    if type(stream) not in (io.BufferedReader, io.FileIO):
        return None
    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        start = stream.tell()
    except (OSError, ValueError):
        return None
    if detect_compression(os.pread(fd, 10, start)) is not Compression.NONE:
        return None
    return start


class _Applier:
    """State of one apply: descriptor cache, unpacked paths, deferred directory times."""

    def __init__(self, dest: str, opts: ApplyOptions) -> None:
        self.opts = opts
        self.overlay = opts.whiteouts is WhiteoutFormat.OVERLAY
        privileged = os.geteuid() == 0
        self.chown = privileged if opts.chown is None else opts.chown
        self.devices = privileged if opts.devices is None else opts.devices
        self.id_map = opts.id_map
        self.identity = opts.id_map.is_identity
        self.root_pair = opts.id_map.root_pair()
        self.euid, self.egid = os.geteuid(), os.getegid()
        umask = os.umask(0o022)
        os.umask(umask)
        self.umask = umask
        try:
            self.root_fd = os.open(dest, _DIR_OPEN)
        except OSError as exc:
            raise ArchiveError(
                f"cannot open layer directory {dest}: {exc}", errno=exc.errno
            ) from exc
        # path -> (fd, setgid?) of directories opened beneath the root
        self.dirs: dict[str, tuple[int, bool]] = {}
        self.root_setgid = bool(os.fstat(self.root_fd).st_mode & stat.S_ISGID)
        self.unpacked: set[str] = set()
        self.dir_times: dict[str, tuple[int, int]] = {}
        self.removed_dirs = False  # a directory was deleted: dir_times may name stale paths
        # The helper processes get the regular files at paths this apply has
        # not made yet (not in ``unpacked`` or ``implied``) and that hold no
        # directory: into a directory that was empty, every such path is free;
        # into one that was not, a file or link there is the helper's to
        # replace, and a directory (checked here) this process replaces itself.
        self.layer_fd = -1  # a plain layer file: helpers copy bodies from it by offset
        self.writers: list[FileWriter] = []
        self.writer_of: dict[str, FileWriter] = {}  # by parent: one directory, one helper
        #: paths sent to a helper since the last barrier: not known to exist yet
        self.pending: set[str] = set()
        self.implied: set[str] = set()  # parents made for entries that came before them
        self.helper_countdown = -1 if helper_after is None else helper_after
        self.fresh_dest = False  # the directory was empty: no lstat before sending
        if helper_after is not None:
            with os.scandir(self.root_fd) as listing:
                self.fresh_dest = next(listing, None) is None

    def close(self) -> None:
        for writer in self.writers:
            writer.kill()
        self.writers = []
        self._drop_cache()
        os.close(self.root_fd)

    # -- the helper process ---------------------------------------------------

    def start_helpers(self) -> None:
        """Start the helpers now rather than after ``helper_after`` files."""
        self._start_writer()

    def _start_writer(self) -> None:
        self.helper_countdown = -1
        if not can_fork_writer():
            return
        try:
            for _ in range(helpers):
                writer = FileWriter(
                    self.root_fd, self.layer_fd, use_openat2=use_openat2, siblings=self.writers
                )
                self.writers.append(writer)
        except OSError:  # no process or pipe to spare: apply alone
            for writer in self.writers:
                writer.kill()
            self.writers = []

    def _settle(self) -> None:
        """Wait for the helpers' files (a barrier), turning a failure into ours."""
        self.pending.clear()
        try:
            for writer in self.writers:
                writer.send_barrier()
            for writer in self.writers:
                writer.wait_barrier()
        except WriterError as exc:
            if exc.unsafe:
                raise UnsafeArchiveError(
                    f"{exc.path}: a component of its parent is not a directory "
                    "(symlinks on disk are never followed)"
                ) from None
            raise OSError(exc.errno, exc.message, exc.path) from None

    def _settle_if_pending(self) -> None:
        if self.pending:
            self._settle()

    # -- directory descriptors ---------------------------------------------

    def _drop_cache(self) -> None:
        for fd, _ in self.dirs.values():
            os.close(fd)
        self.dirs.clear()

    def _parent(
        self, parts: list[str], create: bool = True, *, parent_path: str | None = None
    ) -> tuple[int, bool]:
        """Descriptor of the directory holding ``parts[-1]`` (created if missing).

        ``parent_path`` is ``"/".join(parts[:-1])`` when the caller has it already.
        """
        depth = len(parts) - 1
        if depth == 0:
            return self.root_fd, self.root_setgid
        hit = self.dirs.get("/".join(parts[:depth]) if parent_path is None else parent_path)
        if hit is not None:
            return hit
        pending = self.pending
        if pending and any("/".join(parts[:i]) in pending for i in range(1, depth + 1)):
            self._settle()  # a parent is a file still being made: let it exist first
        # a miss: start from the deepest cached ancestor
        start = depth - 1
        fd, setgid = self.root_fd, self.root_setgid
        while start > 0:
            anc = self.dirs.get("/".join(parts[:start]))
            if anc is not None:
                fd, setgid = anc
                break
            start -= 1
        if use_openat2 and depth - start > 1:
            # two or more components: one openat2 beats a walk (one component: the walk wins)
            rest = "/".join(parts[start:depth])
            try:
                nfd = _openat2.open_dir_beneath(fd, rest)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                    raise UnsafeArchiveError(
                        f"{'/'.join(parts)}: a component of {rest} is not a directory "
                        "(symlinks on disk are never followed)"
                    ) from exc
                if exc.errno == errno.ENOENT and not create:
                    raise FileNotFoundError(exc.errno, exc.strerror, rest) from None
                if exc.errno in (errno.ENOSYS, errno.EPERM):
                    _disable_openat2()
                elif exc.errno not in (errno.ENOENT, errno.EAGAIN, errno.ENAMETOOLONG):
                    raise
                # missing parents to create, a racing rename, a path over PATH_MAX: walk
            else:
                setgid = bool(os.fstat(nfd).st_mode & stat.S_ISGID)
                self.dirs["/".join(parts[:depth])] = (nfd, setgid)
                return nfd, setgid
        return self._walk(parts, start, depth, fd, setgid, create)

    def _walk(
        self, parts: list[str], start: int, depth: int, fd: int, setgid: bool, create: bool
    ) -> tuple[int, bool]:
        """Open ``parts[start:depth]`` below ``fd`` one component at a time with ``O_NOFOLLOW``.

        Intermediate directories are cached while the cache has room, else
        closed as soon as the next one is open, so a 10,000-deep name never
        holds 10,000 descriptors.
        """
        uncached = -1  # the previous level's descriptor when it was not cached
        try:
            for i in range(start, depth):
                name = parts[i]
                try:
                    nfd = os.open(name, _DIR_OPEN, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    self._mkdir_implied(fd, name, setgid)
                    self.implied.add("/".join(parts[: i + 1]))
                    nfd = os.open(name, _DIR_OPEN, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        what = "/".join(parts[: i + 1])
                        raise UnsafeArchiveError(
                            f"{'/'.join(parts)}: path component {what} is not a directory "
                            "(symlinks on disk are never followed)"
                        ) from exc
                    raise
                if uncached >= 0:
                    os.close(uncached)
                    uncached = -1
                setgid = bool(os.fstat(nfd).st_mode & stat.S_ISGID)
                if i == depth - 1 or len(self.dirs) < _MAX_CACHED_DIRS:
                    self.dirs["/".join(parts[: i + 1])] = (nfd, setgid)
                else:
                    uncached = nfd
                fd = nfd
        finally:
            if uncached >= 0:
                os.close(uncached)
        return fd, setgid

    def _mkdir_implied(self, parent_fd: int, name: str, parent_setgid: bool) -> None:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
        if self.umask & 0o755:
            os.chmod(name, 0o755, dir_fd=parent_fd)
        if self.chown:
            uid, gid = self.root_pair
            if (uid, gid) != (self.euid, self.egid) or parent_setgid:
                os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)

    # -- removal -------------------------------------------------------------

    def _remove(self, parent_fd: int, name: str, path: str) -> bool:
        """Remove ``name`` whatever it is; True if something was removed.

        A helper may be making ``path`` (then it must exist first), or files
        in a directory that goes (then they must, and the helpers must forget
        the directory): both wait for a barrier.  A file from before this
        apply goes at once.
        """
        if path in self.pending:
            self._settle()
        try:
            os.unlink(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            self._settle_if_pending()
            self._remove_tree(parent_fd, name, path)
        except PermissionError as exc:
            # unlink of a directory gives EISDIR on Linux, EPERM elsewhere
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise exc from None
            self._settle_if_pending()
            self._remove_tree(parent_fd, name, path)
        return True

    def _remove_tree(self, parent_fd: int, name: str, path: str) -> None:
        """Delete a directory tree, first closing cached descriptors inside it."""
        prefix = path + "/"
        for key in [k for k in self.dirs if k == path or k.startswith(prefix)]:
            os.close(self.dirs.pop(key)[0])
        self.dir_times.pop(path, None)
        self.removed_dirs = True  # deeper paths in dir_times are dropped when reused
        remove_tree_at(parent_fd, name)

    def _make_opaque(self, parent_parts: list[str]) -> None:
        """Empty a directory of what this layer did not unpack (OCI opaque marker)."""
        dir_path = "/".join(parent_parts)
        if parent_parts:
            fd, _ = self._parent([*parent_parts, ""])
        else:
            fd = self.root_fd
        prefix = dir_path + "/" if dir_path else ""
        for name in os.listdir(fd):
            child = prefix + name
            if child not in self.unpacked:
                self._remove(fd, name, child)

    # -- entries ---------------------------------------------------------------

    def run(self, reader: TarReader) -> int:
        size = 0
        next_entry, apply_entry, dirs = reader.next_entry, self._apply_entry, self.dirs
        while (entry := next_entry()) is not None:
            size += entry.size
            if len(dirs) >= _MAX_CACHED_DIRS:
                self._drop_cache()  # only here, between entries: no descriptor is in use
            apply_entry(reader, entry)
        self._set_dir_times()
        return size

    def _apply_entry(self, reader: TarReader, entry: TarEntry) -> None:
        name = entry.name
        path = name.rstrip("/")
        parts = path.split("/")
        if not path or "" in parts or "." in parts or ".." in parts or "\x00" in name:
            # not already canonical ("./x", "/x", "a//b", dots): the careful way
            checked = split_entry_name(name)
            if checked is None:
                raise UnsafeArchiveError(f"entry name {name!r} escapes the layer root")
            if not checked:
                return  # the root entry: skipped, the layer root keeps its own metadata
            parts = checked
            path = "/".join(parts)
        if parts[0].startswith(WHITEOUT_META_PREFIX) and (
            len(parts) > 1 or parts[0] != OPAQUE_MARKER
        ):
            return  # AUFS metadata at the root (.wh..wh.plnk/..., .wh..wh.aufs): not content
        base = parts[-1]
        if self.pending and (path in self.unpacked or path in self.implied):
            self._settle()  # this layer made the path already: it must exist first

        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, base, path, entry)
            return
        if self.removed_dirs and entry.type != TYPE_DIR:
            self.dir_times.pop(path, None)  # a directory of this layer was here, then removed

        parent_fd, parent_setgid = self._parent(parts, parent_path=path[: -len(base) - 1])
        kind = entry.type
        if kind == TYPE_REG:
            self._regular(reader, entry, parent_fd, parent_setgid, base, path)
        elif kind == TYPE_DIR:
            self._directory(entry, parent_fd, parent_setgid, base, path)
        elif kind == TYPE_SYMLINK:
            self._create(
                parent_fd, base, path, lambda: os.symlink(entry.linkname, base, dir_fd=parent_fd)
            )
            self._metadata_by_name(entry, parent_fd, base, parent_setgid, symlink=True)
        elif kind == TYPE_LINK:
            self._hardlink(entry, parent_fd, base, path)
        elif kind in (TYPE_CHR, TYPE_BLK, TYPE_FIFO):
            self._special(entry, parent_fd, parent_setgid, base, path)
        else:
            raise InvalidArchiveError(f"{entry.name}: unsupported tar entry type {kind!r}")
        self.unpacked.add(path)

    def _whiteout(self, parts: list[str], base: str, path: str, entry: TarEntry) -> None:
        if entry.type not in (TYPE_REG, TYPE_LINK, TYPE_SYMLINK) and entry.size:
            raise InvalidArchiveError(f"{entry.name}: whiteout with content")
        parent_parts = parts[:-1]
        if base == OPAQUE_MARKER:
            if self.overlay:
                fd, _ = self._parent(parts)
                os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
            else:
                self._parent(parts)  # implied parents, as Docker creates them
                self._make_opaque(parent_parts)
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # other .wh..wh.* metadata below the root: nothing to apply
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise UnsafeArchiveError(f"whiteout {entry.name!r} names no entry")
        fd, _ = self._parent(parts)
        target_path = "/".join([*parent_parts, target])
        if self.overlay:
            self._remove(fd, target, target_path)
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=fd)
            if self.chown:
                uid, gid = self._owner(entry)
                os.chown(target, uid, gid, dir_fd=fd, follow_symlinks=False)
            if self.removed_dirs:
                self.dir_times.pop(target_path, None)
            self.unpacked.add(target_path)
        else:
            self._remove(fd, target, target_path)

    def _create(self, parent_fd: int, name: str, path: str, make: Callable[[], None]) -> None:
        """Run ``make()``; if the name exists, remove it and try once more."""
        try:
            make()
        except FileExistsError:
            self._remove(parent_fd, name, path)
            make()

    def _owner(self, entry: TarEntry) -> tuple[int, int]:
        if self.identity:
            return entry.uid, entry.gid
        return self.id_map.to_host(entry.uid, entry.gid)

    def _regular(
        self,
        reader: TarReader,
        entry: TarEntry,
        parent_fd: int,
        parent_setgid: bool,
        name: str,
        path: str,
    ) -> None:
        mode = entry.mode
        if self.helper_countdown >= 0:
            if self.helper_countdown:
                self.helper_countdown -= 1
            else:
                self._start_writer()
        if (
            self.writers
            and not entry.xattrs
            and (self.layer_fd >= 0 or entry.size <= _SHIPPED_BODY_MAX)
            and path not in self.unpacked
            and path not in self.implied
            and (self.fresh_dest or not _is_directory(parent_fd, name))
        ):
            self._send_to_writer(reader, entry, parent_setgid, name, path)
            return
        try:
            fd = os.open(name, _FILE_CREATE, mode & 0o777, dir_fd=parent_fd)
        except FileExistsError:
            self._remove(parent_fd, name, path)
            fd = os.open(name, _FILE_CREATE, mode & 0o777, dir_fd=parent_fd)
        try:
            if entry.size:
                reader.copy_body(fd)
            self._metadata_fd(entry, fd, path, parent_setgid)
        finally:
            os.close(fd)

    def _send_to_writer(
        self,
        reader: TarReader,
        entry: TarEntry,
        parent_setgid: bool,
        name: str,
        path: str,
    ) -> None:
        """Have a helper make this file: metadata decided here, the body by file offset
        (a plain layer file) or in the message (a decoded stream)."""
        mode = entry.mode
        uid = -1
        gid = 0
        if self.chown:
            if self.identity:
                owner = entry.uid, entry.gid
            else:
                owner = self.id_map.to_host(entry.uid, entry.gid)
            if owner[0] != self.euid or owner[1] != self.egid or parent_setgid:
                uid, gid = owner
        chmod = mode if mode & 0o7000 or mode & self.umask else -1
        mtime = entry.mtime_ns
        atime = entry.atime_ns if entry.atime_ns is not None else mtime
        size = entry.size
        parent = path[: -len(name) - 1] if len(path) > len(name) else ""
        writer = self.writer_of.get(parent)
        if writer is None:
            writer = self.writers[len(self.writer_of) % len(self.writers)]
            self.writer_of[parent] = writer
        if self.layer_fd >= 0:
            offset = reader.input_offset
            if size:
                reader.skip_body()  # checks that the whole body is in the file
            writer.add(
                (parent, name, offset, size, mode & 0o777, uid, gid, chmod, atime, mtime, b"")
            )
        else:
            body = reader.take_body()
            writer.add_with_body(
                (parent, name, -1, size, mode & 0o777, uid, gid, chmod, atime, mtime, body)
            )
        self.pending.add(path)

    def _metadata_fd(self, entry: TarEntry, fd: int, path: str, parent_setgid: bool) -> None:
        """chown, xattrs, chmod (after chown, which clears setuid), times — on a descriptor."""
        mode = entry.mode
        if self.chown:
            if self.identity:
                uid, gid = entry.uid, entry.gid
            else:
                uid, gid = self.id_map.to_host(entry.uid, entry.gid)
            if uid != self.euid or gid != self.egid or parent_setgid:
                os.fchown(fd, uid, gid)
        if entry.xattrs:
            self._xattrs(entry, fd, path)
        if mode & 0o7000 or mode & self.umask:
            os.fchmod(fd, mode)
        mtime = entry.mtime_ns
        os.utime(fd, ns=(entry.atime_ns if entry.atime_ns is not None else mtime, mtime))

    def _metadata_by_name(
        self, entry: TarEntry, parent_fd: int, name: str, parent_setgid: bool, *, symlink: bool
    ) -> None:
        if self.chown:
            uid, gid = self._owner(entry)
            if (uid, gid) != (self.euid, self.egid) or parent_setgid:
                os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
        if entry.xattrs:
            # lsetxattr through the parent's descriptor: the last component is not followed
            self._xattrs_path(entry, f"/proc/self/fd/{parent_fd}/{name}")
        if not symlink and (entry.mode & 0o7000 or entry.mode & self.umask):
            os.chmod(name, entry.mode, dir_fd=parent_fd)
        mtime = entry.mtime_ns
        atime = entry.atime_ns if entry.atime_ns is not None else mtime
        os.utime(name, ns=(atime, mtime), dir_fd=parent_fd, follow_symlinks=False)

    def _xattrs(self, entry: TarEntry, fd: int, path: str) -> None:
        for key, value in entry.xattrs.items():
            if key.startswith(_PRIVATE_XATTR_PREFIXES):
                continue
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                self._xattr_error(exc, key, path)

    def _xattrs_path(self, entry: TarEntry, proc_path: str) -> None:
        for key, value in entry.xattrs.items():
            if key.startswith(_PRIVATE_XATTR_PREFIXES):
                continue
            try:
                os.setxattr(proc_path, key, value, follow_symlinks=False)
            except OSError as exc:
                self._xattr_error(exc, key, proc_path)

    def _xattr_error(self, exc: OSError, key: str, path: str) -> None:
        if exc.errno == errno.EPERM:
            return  # as Docker: unprivileged xattr namespaces are skipped
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            if self.opts.best_effort_xattrs:
                return
            raise NotSupportedError(
                f"{path}: the backing filesystem does not support xattr {key} "
                "(use best-effort xattrs to skip)",
                errno=errno.EOPNOTSUPP,
            ) from exc
        raise exc

    def _directory(
        self, entry: TarEntry, parent_fd: int, parent_setgid: bool, name: str, path: str
    ) -> None:
        mode = entry.mode
        fresh = True  # made here: the owner and mode that mkdir gave are known
        try:
            os.mkdir(name, mode & 0o777, dir_fd=parent_fd)
        except FileExistsError:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                fresh = False  # merged with an existing directory: set everything
                if self.pending and self.euid != 0:
                    # its new mode may shut out an owner without root's override:
                    # files sent for it before must exist first, as applied in order
                    self._settle()
            else:
                self._remove(parent_fd, name, path)
                os.mkdir(name, mode & 0o777, dir_fd=parent_fd)
        fd = os.open(name, _DIR_OPEN, dir_fd=parent_fd)
        try:
            if self.chown:
                uid, gid = self._owner(entry)
                if not fresh or uid != self.euid or gid != self.egid or parent_setgid:
                    os.fchown(fd, uid, gid)
            if entry.xattrs:
                self._xattrs(entry, fd, path)
            # a setgid parent passes its setgid bit on to a new directory
            if not fresh or parent_setgid or mode & 0o7000 or mode & self.umask:
                os.fchmod(fd, mode)
            setgid = bool(mode & stat.S_ISGID)
        except BaseException:
            os.close(fd)
            raise
        old = self.dirs.pop(path, None)
        if old is not None:
            os.close(old[0])
        self.dirs[path] = (fd, setgid)
        mtime = entry.mtime_ns
        self.dir_times[path] = (entry.atime_ns if entry.atime_ns is not None else mtime, mtime)

    def _hardlink(self, entry: TarEntry, parent_fd: int, name: str, path: str) -> None:
        target_parts = split_entry_name(entry.linkname)
        if not target_parts:
            raise UnsafeArchiveError(
                f"{entry.name}: hardlink target {entry.linkname!r} is outside the layer"
            )
        if target_parts[0].startswith(WHITEOUT_META_PREFIX):
            raise InvalidArchiveError(f"{entry.name}: AUFS hardlink stashes are not supported")
        target_path = "/".join(target_parts)
        if target_path.startswith(path + "/"):
            # replacing ``path`` deletes the target first (Docker fails the same way)
            raise InvalidArchiveError(f"{entry.name}: hardlink target is inside the entry itself")
        if target_path in self.pending:
            self._settle()  # the target is a file the helper may not have made yet
        try:
            target_fd, _ = self._parent(target_parts, create=False)
        except FileNotFoundError:
            raise InvalidArchiveError(
                f"{entry.name}: hardlink target {entry.linkname!r} does not exist"
            ) from None
        target = target_parts[-1]
        if target_path == path:
            try:  # a link to itself: nothing to do, if it exists
                os.stat(target, dir_fd=target_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise InvalidArchiveError(f"{entry.name}: hardlink to itself, missing") from None
            return

        def make() -> None:
            os.link(target, name, src_dir_fd=target_fd, dst_dir_fd=parent_fd, follow_symlinks=False)

        try:
            self._create(parent_fd, name, path, make)
        except FileNotFoundError:
            raise InvalidArchiveError(
                f"{entry.name}: hardlink target {entry.linkname!r} does not exist"
            ) from None
        except PermissionError as exc:
            raise InvalidArchiveError(
                f"{entry.name}: cannot hardlink to {entry.linkname!r} (a directory?)"
            ) from exc

    def _special(
        self, entry: TarEntry, parent_fd: int, parent_setgid: bool, name: str, path: str
    ) -> None:
        if entry.type == TYPE_FIFO:
            self._create(
                parent_fd, name, path, lambda: os.mkfifo(name, entry.mode & 0o777, dir_fd=parent_fd)
            )
        else:
            if not self.devices:
                if self.opts.devices is None:
                    return  # documented: device nodes are skipped when unprivileged
                raise UnsafeArchiveError(f"{entry.name}: device nodes are not allowed here")
            kind = stat.S_IFCHR if entry.type == TYPE_CHR else stat.S_IFBLK
            dev = os.makedev(entry.devmajor, entry.devminor)
            try:
                self._create(
                    parent_fd,
                    name,
                    path,
                    lambda: os.mknod(name, kind | (entry.mode & 0o777), dev, dir_fd=parent_fd),
                )
            except PermissionError as exc:
                raise NotSupportedError(
                    f"{entry.name}: creating device nodes is not permitted here", errno=exc.errno
                ) from exc
        self._metadata_by_name(entry, parent_fd, name, parent_setgid, symlink=False)

    # -- finish ------------------------------------------------------------------

    def _set_dir_times(self) -> None:
        if self.writers:  # every file first: creating one changes its directory's time
            self._settle()
            writers, self.writers = self.writers, []
            for writer in writers:
                writer.finish()
        for path, (atime, mtime) in self.dir_times.items():
            if len(self.dirs) >= _MAX_CACHED_DIRS:
                self._drop_cache()
            parts = path.split("/")
            try:
                fd, _ = self._parent(parts, create=False)
                os.utime(parts[-1], ns=(atime, mtime), dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, UnsafeArchiveError):
                continue  # removed or replaced later in the stream


def _is_directory(parent_fd: int, name: str) -> bool:
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode)


def _disable_openat2() -> None:
    global use_openat2
    use_openat2 = False
