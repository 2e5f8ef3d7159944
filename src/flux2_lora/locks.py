"""The one flock wrapper: run directories (:class:`flux2_lora.runs.RunLock`), sweep folders and their study
files all use it. The kernel drops a flock when its holder dies, so a lock file never goes stale: a file
whose lock nobody holds tells a reader that its owner is gone. No torch, standard library only.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
from pathlib import Path


class FileLock:
    """An exclusive flock on a file, which records who holds it (``host:pid`` unless a subclass says
    otherwise)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._thread = threading.Lock()  # flock is per open file: threads of one process take turns here too

    def owner_text(self) -> str:
        """What is written into the lock file once it is held (read by whoever finds it busy)."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting when ``blocking``); False when it is held elsewhere and not blocking."""
        if not self._thread.acquire(blocking):
            return False
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except BaseException:
            self._thread.release()
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            self._thread.release()
            return False
        os.ftruncate(fd, 0)
        os.write(fd, self.owner_text().encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            self._thread.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_held(path: Path) -> bool:
    """Whether some live process holds the flock on ``path`` (probing never blocks and releases at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a missing file is held by no one
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
