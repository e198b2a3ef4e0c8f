"""Helper processes that create a layer's regular files while the applier goes on parsing.

Why processes.  On a layer of many small files the time goes to the kernel
creating them (about 25 µs a file on ext4, for GNU tar as for us), and one
process does that work one file at a time.  Two helpers, each given whole
directories (so they never contend for one directory's lock), create files
side by side while the applier parses headers and makes directories, links
and whiteouts: on two cores the 50,000-file layer takes about two thirds of
GNU tar's time.  Threads cannot do it: each system call returns into a
fight for the interpreter lock, and two threads ran slower than one.

What it may do.  The helper creates the regular files named by the applier,
in directories the applier made or opened first, at names this apply has
not used and that hold no directory: where such a name holds a file or a
link from before, the helper removes it as the applier would.  From a plain
layer file the kernel copies the bodies (``sendfile``: the applier sends an
offset and a size); from a stream (a decoder's output) small bodies travel
in the message itself.  It resolves each parent beneath the layer root with
the same rule as the applier (``openat2`` with ``RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS``, else one ``O_NOFOLLOW`` component at a time), so it
can write nowhere the applier could not.  Everything else that removes,
replaces or links is the applier's, after a *barrier*: the helper finishes
all it was sent, forgets its cached directories and answers with the first
error it met (or none).

Lifetime.  The helper is forked (only from a single-threaded process),
dies with its parent (``PR_SET_PDEATHSIG``), exits at the end of its input
and never returns into the caller's code.  :meth:`FileWriter.kill` is the
applier's way out on any error: after it returns nothing more is written.
"""

from __future__ import annotations

import errno
import marshal
import os
import sys

from lamina.archive._paths import open_dir_beneath

__all__ = ["FileRecord", "FileWriter", "can_fork_writer"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeAlias

    #: (parent path, name, body offset or -1, body size, create mode, uid or -1, gid,
    #:  chmod mode or -1, atime ns, mtime ns, the body itself when the offset is -1)
    FileRecord: TypeAlias = tuple[str, str, int, int, int, int, int, int, int, int, bytes]
else:
    FileRecord = tuple

_BATCH = 512  # records a message: large enough to amortise the pipe, small enough to overlap
_BATCH_BYTES = 1 << 20  # bodies a message, at most (about)
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
_PR_SET_PDEATHSIG = 1
_SIGKILL = 9  # Linux's number (helpers exist on Linux only); ``signal`` costs an import
_FILE_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_CACHED_DIRS = 512
_BARRIER = b"\0\0\0\0"  # a message of length zero


def can_fork_writer() -> bool:
    """Whether forking is safe here: Linux, and this process runs one thread only.

    A fork copies one thread; locks other threads held stay locked in the
    child forever.  The helper touches none of them, but a library's own
    threads are its business, so with any thread about the applier simply
    works alone.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class WriterError(OSError):
    """The helper's first failure: errno, message and the entry's path.

    An ``OSError``, so that wherever it surfaces (a barrier, a message to a
    helper that died) the applier reports it as it reports its own calls.
    """

    def __init__(self, err: int, message: str, path: str, unsafe: bool) -> None:
        super().__init__(err, message, path)
        self.errno = err
        self.message = message
        self.path = path
        #: the parent could not be reached without crossing a symlink or non-directory
        self.unsafe = unsafe


class FileWriter:
    """The applier's handle on its helper process."""

    pid: int
    _cmd: int  # the write end of the helper's input
    _reply: int  # the read end of its answers

    def __init__(
        self, root_fd: int, layer_fd: int, *, use_openat2: bool, siblings: list[FileWriter]
    ) -> None:
        cmd_r, cmd_w = os.pipe2(os.O_CLOEXEC)
        reply_r, reply_w = os.pipe2(os.O_CLOEXEC)
        try:
            import fcntl

            fcntl.fcntl(cmd_w, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # a smaller pipe only means more waiting
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the helper: never returns
            code = 1
            try:
                os.close(cmd_w)
                os.close(reply_r)
                for sibling in siblings:  # else a sibling would never see its input end
                    os.close(sibling._cmd)
                    os.close(sibling._reply)
                _die_with_parent(parent)
                _ignore_interrupts()
                _Helper(root_fd, layer_fd, use_openat2).serve(cmd_r, reply_w)
                code = 0
            finally:
                os._exit(code)
        os.close(cmd_r)
        os.close(reply_w)
        self.pid = pid
        self._cmd = cmd_w
        self._reply = reply_r
        self._batch: list[FileRecord] = []
        self._batch_bytes = 0

    def add(self, record: FileRecord) -> None:
        batch = self._batch
        batch.append(record)
        if len(batch) >= _BATCH:
            self._flush()

    def add_with_body(self, record: FileRecord) -> None:
        """A record that carries its body (input that is not a plain file)."""
        self._batch.append(record)
        self._batch_bytes += len(record[10])
        if len(self._batch) >= _BATCH or self._batch_bytes >= _BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        data = marshal.dumps(self._batch)
        self._batch = []
        self._batch_bytes = 0
        self._send(len(data).to_bytes(4, "little") + data)

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._cmd, view) :]
        except BrokenPipeError:
            self._died()

    def send_barrier(self) -> None:
        """Ask for a barrier; :meth:`wait_barrier` takes the answer (so helpers work meanwhile)."""
        self._flush()
        self._send(_BARRIER)

    def wait_barrier(self) -> None:
        """Wait until every file sent exists; raise the helper's first error, if any."""
        answer = b""
        while True:
            chunk = os.read(self._reply, 65536)
            if not chunk:
                self._died()
            answer += chunk
            if len(answer) >= 4 and len(answer) >= 4 + int.from_bytes(answer[:4], "little"):
                break
        failure = marshal.loads(answer[4:])
        if failure is not None:
            raise WriterError(*failure)

    def finish(self) -> None:
        """After a barrier: let the helper exit and reap it."""
        os.close(self._cmd)
        self._cmd = -1
        status = _reap(self.pid)
        self.pid = 0
        os.close(self._reply)
        self._reply = -1
        if status:
            raise WriterError(errno.EIO, f"file helper ended with status {status}", "", False)

    def kill(self) -> None:
        """Stop the helper at once and reap it: after this, nothing more is written."""
        if self.pid:
            try:
                os.kill(self.pid, _SIGKILL)
            except ProcessLookupError:
                pass  # the caller's own SIGCHLD handling reaped it: it is gone
            else:
                _reap(self.pid)
            self.pid = 0
        for fd in (self._cmd, self._reply):
            if fd >= 0:
                os.close(fd)
        self._cmd = self._reply = -1

    def _died(self) -> None:
        raise WriterError(errno.EIO, "the file helper process died", "", False)


def create_file(parent_fd: int, record: FileRecord, layer_fd: int) -> None:
    """Create one new regular file as a record says."""
    _, name, offset, size, mode, uid, gid, chmod, atime, mtime, body = record
    fd = os.open(name, _FILE_CREATE, mode, dir_fd=parent_fd)
    try:
        if offset < 0:  # the body came with the record
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            size = 0
        while size:
            sent = os.sendfile(fd, layer_fd, offset, size)
            if not sent:
                raise OSError(errno.EIO, "the layer file ended inside a body")
            offset += sent
            size -= sent
        if uid >= 0:
            os.fchown(fd, uid, gid)
        if chmod >= 0:
            os.fchmod(fd, chmod)
        os.utime(fd, ns=(atime, mtime))
    finally:
        os.close(fd)


def _reap(pid: int) -> int:
    """Wait for a helper; its wait status (0 when someone else reaped it already).

    A caller that ignores SIGCHLD, or reaps every child in a handler, takes
    the status first; the helper answered its last barrier before exiting,
    so nothing is lost but the status.
    """
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0


def _ignore_interrupts() -> None:
    """Ctrl-C reaches the whole process group: the applier handles it and kills us."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _die_with_parent(parent: int) -> None:
    import ctypes  # loaded by _openat2 already (the applier imports it)

    prctl = getattr(ctypes.CDLL(None), "prctl", None)
    if prctl is not None:  # else it ends when its input pipe closes
        prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took
        os._exit(1)


class _Helper:
    """The helper's side: read batches, create files, answer barriers."""

    def __init__(self, root_fd: int, layer_fd: int, use_openat2: bool) -> None:
        self.root_fd = root_fd
        self.layer_fd = layer_fd
        self.use_openat2 = use_openat2
        self.dirs: dict[str, int] = {}
        self.failure: tuple[int, str, str, bool] | None = None

    def serve(self, cmd_fd: int, reply_fd: int) -> None:
        buf = b""
        while True:
            chunk = os.read(cmd_fd, _PIPE_SIZE)
            if not chunk:
                return  # the applier is done (or gone)
            buf = buf + chunk if buf else chunk
            pos = 0
            while len(buf) - pos >= 4:
                size = int.from_bytes(buf[pos : pos + 4], "little")
                if size == 0:
                    pos += 4
                    self._answer(reply_fd)
                    continue
                if len(buf) - pos - 4 < size:
                    break
                records = marshal.loads(buf[pos + 4 : pos + 4 + size])
                pos += 4 + size
                if self.failure is None:
                    self._create_all(records)
            buf = buf[pos:]

    def _answer(self, reply_fd: int) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()  # the applier may now remove or replace directories
        data = marshal.dumps(self.failure)
        data = len(data).to_bytes(4, "little") + data
        while data:
            data = data[os.write(reply_fd, data) :]

    def _create_all(self, records: list[FileRecord]) -> None:
        dirs, root_fd, layer_fd = self.dirs, self.root_fd, self.layer_fd
        for record in records:
            parent, name = record[0], record[1]
            try:
                parent_fd = dirs.get(parent) if parent else root_fd
                if parent_fd is None:
                    parent_fd = self._open_parent(parent)
            except OSError as exc:
                unsafe = exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV)
                self._fail(exc, f"{parent}/{name}", unsafe)
                return
            try:
                try:
                    create_file(parent_fd, record, layer_fd)
                except FileExistsError:
                    # A file or a link from before this apply (the applier keeps the
                    # names this layer made, and directories, to itself): it goes,
                    # as the applier would remove it.
                    os.unlink(name, dir_fd=parent_fd)
                    create_file(parent_fd, record, layer_fd)
            except OSError as exc:
                self._fail(exc, f"{parent}/{name}" if parent else name, False)
                return

    def _fail(self, exc: OSError, path: str, unsafe: bool) -> None:
        self.failure = (exc.errno or errno.EIO, exc.strerror or str(exc), path, unsafe)

    def _open_parent(self, parent: str) -> int:
        """Open (and cache) directory ``parent``, from its cached parent where there is one."""
        dirs = self.dirs
        if len(dirs) >= _MAX_CACHED_DIRS:
            for fd in dirs.values():
                os.close(fd)
            dirs.clear()
        base, rest = self.root_fd, parent
        cut = parent.rfind("/")
        if cut > 0:
            above = dirs.get(parent[:cut])
            if above is not None:  # the usual case: a new directory below the last one
                base, rest = above, parent[cut + 1 :]
        fd = open_dir_beneath(base, rest, use_openat2=self.use_openat2)
        dirs[parent] = fd
        return fd
