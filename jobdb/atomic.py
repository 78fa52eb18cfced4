"""Atomic writes of local files: every file the project keeps is either its old or its new complete self.

The content goes to a temp file beside the target (same folder, so the same file system), then
`os.replace` puts it in place in one step; a reader, or a crash at any moment, sees the old file or
the new one, never a part. A writer killed mid-write leaves only its temp file behind (a name
starting with `.`, never matching what readers look for).

`durable=True` (the default) also fsyncs the file before the rename and the folder after it, so the
new content survives a power cut once the call returned. Small files rewritten many times a minute
whose loss costs nothing (pacing turns, slot-ledger entries, the lock-holder note) pass
`durable=False`: atomic all the same, without a disk flush per write.

Why not fsspec's transactions: they move the file with `shutil.move` and do not fsync; object
storage gets its own atomic uploads (tasks/results/storage.py).

This module sits in jobdb/, the lowest layer, so flows/ and tasks/ can both use it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union


def temp_path_for(target: Path) -> Path:
    """`.<name>.<pid>.tmp` beside `target`: one writer process per name, and the pid tells whether
    a leftover's writer is gone (jobdb/storage.remove_stale_temp_files)."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(target: Union[str, Path], *, temp: Optional[Path] = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path to write the new content to; when the block ends without error the temp
    file replaces `target` whole, when it raises the temp file is removed and `target` is untouched.

    `temp`: another temp name beside the target (default `temp_path_for(target)`). Threads writing
    the same target in one process must take turns (they would share the default temp name).
    """
    target = Path(target)
    tmp = temp_path_for(target) if temp is None else temp
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        if durable:
            fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the original error matters more than a leftover temp file
        raise
    if durable:
        fsync_folder(target.parent)


def write_atomic(target: Union[str, Path], data: Union[bytes, str], *, durable: bool = True,
                 temp: Optional[Path] = None) -> None:
    """Write `data` (text as UTF-8) to `target` atomically."""
    with atomic_path(target, temp=temp, durable=durable) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def fsync_file(path: Path) -> None:
    # O_NONBLOCK: a regular file ignores it; a FIFO in the temp file's place (what a test puts
    # there to stop a writer mid-document) would block this open until some writer came, and
    # its fsync fails at once instead (EINVAL), so the write fails as a broken disk would.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: not every platform can fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
