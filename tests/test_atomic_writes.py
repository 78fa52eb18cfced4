"""jobdb/atomic.py, the one atomic-write helper: a writer killed at any moment leaves its target
either old or new and complete, never a part; a write that raises leaves the target untouched."""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from jobdb.atomic import atomic_path, write_atomic

SIZE = 8 << 20  # 8 MiB in 1 MiB chunks: a write takes long enough to be caught in the middle
CHUNK = 1 << 20


def content(generation: int) -> bytes:
    return bytes([generation % 250 + 1]) * SIZE


def _rewrite_forever(target: str, first_generation: int, started) -> None:
    generation = first_generation
    started.set()
    while True:
        with atomic_path(Path(target)) as tmp:
            with open(tmp, "wb") as f:
                block = content(generation)[:CHUNK]
                for _ in range(SIZE // CHUNK):
                    f.write(block)
                    f.flush()  # the temp file grows on disk while the test watches it
        generation += 1


def _temp_files(folder: Path, target: Path) -> list:
    return [p for p in folder.iterdir() if p.name.startswith(f".{target.name}.") and p.name.endswith(".tmp")]


def _temp_sizes(folder: Path, target: Path) -> list:
    sizes = []
    for temp in _temp_files(folder, target):
        try:
            sizes.append(temp.stat().st_size)
        except FileNotFoundError:
            pass  # renamed onto the target since the listing
    return sizes


def _kill_when(proc, condition, deadline: float) -> None:
    """SIGKILL the writer as soon as `condition()` holds (read from the files it writes)."""
    while not condition():
        assert time.monotonic() < deadline, "the writer never reached the moment to kill it at"
        # a tight loop: the moment must not be missed by sleeping
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()


def _identity(path: Path):
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _complete(data: bytes) -> bool:
    return len(data) == SIZE and data.count(data[:1]) == SIZE


def test_sigkill_mid_write_leaves_the_old_or_the_new_complete_file(tmp_path: Path) -> None:
    """Kills chosen by what the writer does, never by time: while its temp file exists and grows
    (mid-write), once the temp file is complete (fsync and rename under way), or as soon as the
    target changed (a writer that overwrote it in place would be caught half way). Rounds go on until
    a kill has landed mid-write (a temp file left behind), so the test proves what it says on a
    loaded machine too."""
    target = tmp_path / "big.bin"
    write_atomic(target, content(0))
    ctx = multiprocessing.get_context("fork")  # the child writes at once, without re-importing
    generation, rounds, left_mid_write = 1, 0, 0
    while rounds < 6 or not left_mid_write:
        rounds += 1
        assert rounds <= 60, "no kill landed while a temp file was being written"
        before = _identity(target)
        started = ctx.Event()
        proc = ctx.Process(target=_rewrite_forever, args=(str(target), generation, started), daemon=True)
        proc.start()
        assert started.wait(60)
        deadline = time.monotonic() + 60
        kind = rounds % 3
        if kind == 0:  # mid-write
            _kill_when(proc, lambda: any(size > 0 for size in _temp_sizes(tmp_path, target)), deadline)
        elif kind == 1:  # the temp file is whole: the writer is at its fsync / rename
            _kill_when(proc, lambda: SIZE in _temp_sizes(tmp_path, target), deadline)
        else:  # the target just changed (a rename, or a writer that changes it in place)
            _kill_when(proc, lambda: _identity(target) != before, deadline)

        after = target.read_bytes()  # the old content, or a whole one the writer finished
        assert _complete(after), f"round {rounds}: {len(after)} bytes, {len(set(after))} distinct values"
        leftovers = _temp_files(tmp_path, target)
        left_mid_write += bool(leftovers)
        for leftover in leftovers:  # what a killed writer leaves: never the target, removed by its owner's cleanup
            leftover.unlink()
        generation += 50  # each round's contents differ from the last round's
    print(f"{rounds} kills, {left_mid_write} mid-write")


def test_a_write_that_raises_leaves_the_target_untouched_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, '{"v": 1}', durable=False)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("the writer failed")
    assert target.read_text() == '{"v": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    write_atomic(target, b'{"v": 3}')
    assert target.read_text() == '{"v": 3}' and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
