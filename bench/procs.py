"""Worker processes of a benchmark run: start one, wait until it is ready, collect its figures."""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 60.0
FINISH_TIMEOUT = 60.0


class BenchProcess:
    """A child process speaking the bench protocol: ``ready``, then one JSON line on SIGTERM."""

    def __init__(self, module: str, *args: str, prefix: tuple[str, ...] = ()) -> None:
        self.command = [*prefix, sys.executable, "-m", module, *args]
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.process.stderr is not None
        self._stderr.extend(self.process.stderr)

    def _next_line(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            raise TimeoutError(f"{' '.join(self.command)} said nothing for {timeout} s") from None
        if line is None:
            self.process.wait()
            tail = "".join(self._stderr[-20:])
            raise RuntimeError(f"{' '.join(self.command)} exited early:\n{tail}")
        return line

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> BenchProcess:
        """Block until the process printed ``ready``."""
        while self._next_line(timeout) != "ready":
            pass
        return self

    def finish(self) -> dict[str, Any]:
        """SIGTERM the process and return the figures it printed."""
        self.process.send_signal(signal.SIGTERM)
        return self.figures(FINISH_TIMEOUT)

    def figures(self, timeout: float) -> dict[str, Any]:
        """The JSON line the process prints when it is done, once it exited cleanly."""
        while not (line := self._next_line(timeout)).startswith("{"):
            pass
        code = self.process.wait(FINISH_TIMEOUT)
        if code:
            tail = "".join(self._stderr[-20:])
            raise RuntimeError(f"{' '.join(self.command)} exited with {code}:\n{tail}")
        figures: dict[str, Any] = json.loads(line)
        return figures

    def kill(self) -> None:
        """Stop the process at once (cleanup after a failed run)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far (Linux: utime + stime of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """A process's resident set size now, in KiB (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS in /proc/{pid}/status")


def peak_rss_kb() -> int:
    """This process's peak RSS in KiB.

    On Linux, ``getrusage(RUSAGE_SELF).ru_maxrss`` of a process started by ``subprocess`` also
    counts the parent's peak (the kernel carries it over the fork and exec), so the kernel's
    high-water mark of this process's own memory, ``VmHWM``, is read instead where it exists.
    """
    with suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
