"""Temporary folders of merges that died: finding and removing them safely.

A merge writes ``.<name>.mogen-tmp-<pid>-<token>`` beside its target and renames
it into place when complete (and, with overwrite, moves the old folder aside
as ``.<name>.mogen-old-<pid>-<token>`` before deleting it). A merge killed
midway leaves these behind, up to the size of the output. A later merge to the
same target, or ``mogen merge --clean``, removes those whose merge is gone:
its process no longer runs (a zombie counts as gone) AND nobody holds the
folder's lock, an ``flock`` that a running merge holds on its temporary folder
from creation to commit and that the kernel drops when the process dies,
however it dies. Both must say "gone": the pid alone could be reused by an
unrelated process (then the leftover is kept, never wrongly removed), and the
lock alone is not yet taken in the instant between a merge's ``mkdir`` and
its ``flock``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from pathlib import Path

__all__ = ["lock_dir", "leftovers", "remove_leftovers"]


def lock_dir(path: Path) -> int:
    """Takes the lock of a merge's temporary folder; returns the fd that holds it (close it to release)."""
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _pattern(final_name: str) -> re.Pattern:
    return re.compile(r"\." + re.escape(final_name) + r"\.mogen-(?:tmp|old)-(\d+)-[0-9a-f]{8}")


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: alive
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state in (b"Z", b"X")  # killed, not yet reaped
    except (OSError, IndexError):
        return False


def _unlocked(path: Path) -> bool:
    """True if nobody holds the folder's lock (we take it for an instant, then let go)."""
    try:
        fd = lock_dir(path)
    except BlockingIOError:
        return False
    except OSError:  # vanished or unreadable: not ours to judge
        return False
    os.close(fd)
    return True


def leftovers(final: Path) -> list[Path]:
    """Temporary folders beside ``final`` left by merges to it whose process is gone."""
    final = Path(os.path.abspath(os.fspath(final)))
    pat = _pattern(final.name)
    try:
        names = os.listdir(final.parent)
    except OSError:
        return []
    out = []
    for n in sorted(names):
        m = pat.fullmatch(n)
        p = final.parent / n
        if m and p.is_dir() and not p.is_symlink() and _process_gone(int(m.group(1))) and _unlocked(p):
            out.append(p)
    return out


def remove_leftovers(final: Path) -> list[Path]:
    """Removes :func:`leftovers` of ``final``; returns what was removed."""
    removed = []
    for p in leftovers(final):
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            removed.append(p)
    return removed
