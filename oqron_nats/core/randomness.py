"""Random hex for job ids and correlation ids: the OS's randomness, read a block at a time.

``os.urandom`` is a system call; at two per added job it cost add_bulk about 8 % of its CPU.
A process draws its ids from one block of BLOCK bytes at a time instead: the same randomness
(the OS's), read once per a hundred jobs or so. The block is the process's own: a forked child
forgets the parent's (it would otherwise hand out the same ids), and threads take their bytes
under a lock (two threads never get the same bytes).
"""

from __future__ import annotations

import os
import threading

BLOCK = 4096
"""Bytes read from the OS at a time."""


class RandomBlock:
    """Random bytes from ``os.urandom``, read BLOCK at a time, each byte handed out once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._used = 0

    def hex(self, size: int) -> str:
        """``size`` random bytes as hex (``2 * size`` digits), never handed out before."""
        if size > BLOCK:
            return os.urandom(size).hex()
        with self._lock:
            if self._used + size > len(self._block):
                self._block, self._used = os.urandom(BLOCK), 0
            start = self._used
            self._used += size
            return self._block[start : start + size].hex()

    def forget(self) -> None:
        """Drop the bytes read so far (in a forked child: they are the parent's)."""
        self._lock = threading.Lock()  # a lock held by another thread at the fork stays held
        self._block, self._used = b"", 0


PROCESS_BLOCK = RandomBlock()
"""The process's block: ids are the process's own, like the OS randomness they come from."""
os.register_at_fork(after_in_child=PROCESS_BLOCK.forget)


def random_hex(size: int) -> str:
    """``size`` random bytes (from the OS) as hex, never handed out before in this process."""
    return PROCESS_BLOCK.hex(size)
