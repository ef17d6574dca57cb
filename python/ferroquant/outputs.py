"""Writing output files safely: never half-written, never a mix of two runs, never the input.

- :func:`replacing` opens a temporary file in the destination's folder; when the block ends without an error the
  file is flushed, fsync'd and renamed over the destination (``os.replace``, atomic on POSIX and Windows), so a
  reader, a crash, ``kill -9``, Ctrl-C or a full disk leaves either the complete old file or the complete new
  one. On an error the temporary file is removed.
- :func:`output_set` groups every file a run writes: inside it, :func:`replacing` keeps each finished file under
  its temporary name, and only when the whole run has succeeded are they all renamed into place, one right after
  the other. A run that fails or is killed before that leaves the old outputs as they were; its temporary files
  (``.<name>.fq-tmp-*``) are removed, or left behind by ``kill -9`` under names no reader takes for an output.
  The renames are preceded by a journal (``.fq-commit.json`` in the folder that holds the set): a run killed
  between two renames (a window of microseconds, wider on an overloaded machine) leaves the journal, and the
  next write into that folder, or :func:`recover`, finishes the renames, so the set never stays mixed.
- Inside a set, :func:`write_bytes` hands the write and its fsync to a background thread (they release the
  GIL, so the disk works while the next file is made); the set waits for them before it renames anything, and
  a failed write fails the set like any other error.
- :func:`refuse_input` raises when an output path is one of the inputs (the same file also through a symlink or
  a hard link), before anything is written.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Iterable, Iterator, List, Optional, Tuple, Union

from ferroquant.errors import DataError

PathLike = Union[str, "os.PathLike[str]"]
TMP_MARK = ".fq-tmp-"

_pending: contextvars.ContextVar[Optional[List[Tuple[Path, Path]]]] = contextvars.ContextVar(
    "ferroquant_pending_outputs", default=None)
#: the background writes of the current set (:func:`write_bytes`)
_writes: contextvars.ContextVar[Optional[List["Future[None]"]]] = contextvars.ContextVar(
    "ferroquant_pending_writes", default=None)
_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()


def _writer() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ferroquant-write")
        return _pool


def _forget_writer() -> None:
    """In a forked child: the parent's writer threads do not exist there (work handed to its pool would wait
    forever), so the child makes its own."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writer)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


JOURNAL = ".fq-commit.json"


def _commit(pairs: List[Tuple[Path, Path]]) -> None:
    if not pairs:
        return
    journal = None
    if len(pairs) > 1:
        home = Path(os.path.commonpath([str(d.parent.resolve()) for _, d in pairs]))
        journal = home / JOURNAL
        fd, name = tempfile.mkstemp(prefix=f"{JOURNAL}{TMP_MARK}", dir=home)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump([[str(t.resolve()), str(d.resolve())] for t, d in pairs], f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, journal)
        _fsync_dir(home)
    for tmp, dest in pairs:
        os.replace(tmp, dest)
    for folder in {dest.parent for _, dest in pairs}:
        _fsync_dir(folder)
    if journal is not None:
        journal.unlink()


def recover(folder: PathLike) -> bool:
    """Finish the renames of a set whose run was killed between two of them (see the module's note); returns
    whether there was one. Every write into a folder does this first for the folder and its parent."""
    journal = Path(folder) / JOURNAL
    try:
        pairs = json.loads(journal.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):  # a journal cut short was written before any rename: nothing to finish
        journal.unlink(missing_ok=True)
        return False
    for tmp, dest in pairs:
        if Path(tmp).exists():
            os.replace(tmp, dest)
    _fsync_dir(Path(folder))
    journal.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def replacing(path: PathLike, mode: str = "wb", encoding: Optional[str] = None, deferred: bool = True
              ) -> Iterator[IO]:
    """``with replacing(p) as f: f.write(...)``: ``p`` is replaced by the complete new file, or not at all
    (see the module's note; inside :func:`output_set` the rename waits for the end of the set unless
    ``deferred=False``, for scratch files that are read back at once)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"replacing() writes whole files ('wb' or 'w'), not mode {mode!r}")
    dest = Path(path)
    fd, tmp = _temporary(dest)
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _ordinary_mode(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    pending = _pending.get() if deferred else None
    if pending is None:
        _commit([(tmp, dest)])
    else:
        pending.append((tmp, dest))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (os.umask has no read-only form)


def _ordinary_mode(tmp: Path) -> None:
    """The permissions a plain ``open()`` would give (mkstemp makes 0600)."""
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
    except OSError:
        pass


def _temporary(dest: Path) -> Tuple[int, Path]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover(dest.parent)
    recover(dest.parent.parent)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}{TMP_MARK}", dir=dest.parent)
    return fd, Path(name)


def _write_fd(fd: int, tmp: Path, dest: Path, data: bytes) -> None:
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OSError(e.errno, f"cannot write {dest}: {e.strerror or e}") from None
    _ordinary_mode(tmp)


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` (see :func:`replacing`); inside an :func:`output_set`, written and fsync'd
    by a background thread while the caller goes on (the set waits for it before renaming)."""
    writes, pending = _writes.get(), _pending.get()
    if writes is None or pending is None:
        with replacing(path) as f:
            f.write(data)
        return Path(path)
    dest = Path(path)
    fd, tmp = _temporary(dest)
    pending.append((tmp, dest))  # removed with the set's other temporary files if anything fails
    writes.append(_writer().submit(_write_fd, fd, tmp, dest, data))
    return dest


def write_text(path: PathLike, text: str) -> Path:
    """Replace ``path`` with ``text`` in UTF-8 (see :func:`replacing`)."""
    return write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def output_set() -> Iterator[None]:
    """Every file written with :func:`replacing` in this block is renamed into place only when the block ends
    without an error (nested sets join the outer one)."""
    if _pending.get() is not None:
        yield
        return
    pending: List[Tuple[Path, Path]] = []
    writes: List["Future[None]"] = []
    token, wtoken = _pending.set(pending), _writes.set(writes)
    try:
        yield
        for w in writes:  # every background write done (the first error raised) before any rename
            w.result()
    except BaseException:
        wait(writes)  # none still writes into a file about to be removed
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _pending.reset(token)
        _writes.reset(wtoken)
    _commit(pending)


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_input(outputs: Iterable[PathLike], inputs: Iterable[Optional[PathLike]], what: str = "output") -> None:
    """Raise :class:`DataError` when an output path names one of the input files (also through a symlink or a
    hard link), or when an output's parent folder is a file."""
    ins = [Path(p) for p in inputs if p is not None and not isinstance(p, (bytes, bytearray)) and _is_path(p)]
    for out in map(Path, outputs):
        for parent in out.parents:
            if parent.exists() and not parent.is_dir():
                raise DataError(f"{what} {out}: its folder {parent} is a file")
            if parent.exists():
                break
        for src in ins:
            if src.exists() and _same(out, src):
                raise DataError(f"{what} {out} is the input {src}: refusing to overwrite it (choose another "
                                "output path)")


def _is_path(p: object) -> bool:
    return isinstance(p, (str, os.PathLike))


__all__ = ["JOURNAL", "output_set", "recover", "refuse_input", "replacing", "write_bytes", "write_text"]
