"""Profile a bench worker while it processes pre-filled jobs: ``python -m bench.profile``.

It starts a nats-server, pre-fills the queue, starts one worker process (``bench/worker.py``)
on the paused queue, attaches ``py-spy record`` to it (``pip install --group bench`` installs
py-spy), resumes, and prints the rate, the CPU share of the worker and of the server, and the
worker's profile: the share of samples by module, and the hottest oqron_nats frames.

With ``--instructions`` the worker runs under valgrind's callgrind instead, and the figure is its
instructions per job while processing: slow, but the same from run to run whatever the machine is
doing, so it can show a 5 % change that the noise of a shared machine hides in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from oqron_nats.testing.server import LocalServer

from . import ours
from .procs import cpu_seconds

FRAME_FILE = re.compile(r"\((?P<file>[^:]+):\d+\)")
CALLGRIND_STARTUP = 300.0
"""Seconds a worker under callgrind (about 50 times slower) gets to start."""


async def count_instructions(url: str, args: argparse.Namespace, workdir: Path) -> None:
    """Run the workload with the worker under callgrind; print its instructions per job."""
    per_job = await instructions_per_job(
        url, args.jobs, concurrency=args.concurrency, guaranteed=bool(args.guaranteed),
        workdir=workdir,
    )  # fmt: skip
    run = f"{args.jobs:,} jobs, concurrency {args.concurrency}, guaranteed {bool(args.guaranteed)}"
    print(f"worker instructions per job: {per_job:,.0f} ({run})")


async def instructions_per_job(
    url: str, jobs: int, *, concurrency: int, guaranteed: bool, workdir: Path
) -> float:
    """The worker's instructions per job under callgrind, processing ``jobs`` pre-filled jobs.

    The counters are zeroed when the queue resumes and dumped when the last job completed, so
    the count covers processing only. Unlike seconds, it does not move with the machine's load.
    """
    valgrind = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir / 'callgrind.out'}")
    async with ours.paused_backlog(
        url, jobs, concurrency=concurrency, guaranteed=guaranteed,
        prefix=valgrind, startup=CALLGRIND_STARTUP,
    ) as (q, (worker,)):  # fmt: skip
        await callgrind_control("-z", worker.process.pid)
        await q.resume()
        await ours.until_completed(q, jobs)
        await callgrind_control("-d", worker.process.pid)
    return dumped_instructions(workdir) / jobs


async def callgrind_control(option: str, pid: int) -> None:
    """Zero (-z) or dump (-d) the counters of a process running under callgrind."""
    done = await asyncio.to_thread(
        subprocess.run, ["callgrind_control", option, str(pid)], capture_output=True, check=False
    )
    if done.returncode:
        sys.exit(f"callgrind_control {option} failed: {done.stderr.decode()[-500:]}")


def dumped_instructions(workdir: Path) -> int:
    """The instruction total of the last callgrind dump (its ``summary:`` or ``totals:`` line)."""
    dumps = sorted(workdir.glob("callgrind.out.*"))
    if not dumps:
        sys.exit("callgrind wrote no dump")
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError(f"no totals in {dumps[-1]}")


async def profile(url: str, server_pid: int, args: argparse.Namespace, raw: Path) -> None:
    """Run the workload with py-spy attached to the worker; print rate and CPU shares."""
    async with ours.paused_backlog(
        url, args.jobs, concurrency=args.concurrency, guaranteed=bool(args.guaranteed)
    ) as (q, (worker,)):
        spy = attach_py_spy(worker.process.pid, args.seconds, raw)
        try:
            worker_cpu, server_cpu = cpu_seconds(worker.process.pid), cpu_seconds(server_pid)
            await q.resume()
            await ours.until_completed(q, args.jobs)
            worker_cpu = cpu_seconds(worker.process.pid) - worker_cpu
            server_cpu = cpu_seconds(server_pid) - server_cpu
            figures = await asyncio.to_thread(worker.finish)
        finally:
            worker.kill()
            await asyncio.to_thread(spy.wait)
    wall = figures["last"] - figures["first"]
    shares = f"worker {worker_cpu / wall:.0%}, nats-server {server_cpu / wall:.0%} of a core"
    print(f"{figures['count'] / wall:,.0f} jobs/s; CPU while processing: {shares}")


def attach_py_spy(pid: int, seconds: int, raw: Path) -> subprocess.Popen[bytes]:
    """Sample the process for ``seconds`` into ``raw`` (py-spy's raw format)."""
    command = [py_spy(), "record", "-p", str(pid), "-d", str(seconds), "-r", "200"]
    command += ["--format", "raw", "-o", str(raw)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def py_spy() -> str:
    """The py-spy executable next to this Python, or on PATH."""
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        sys.exit("py-spy is not installed: pip install --group bench (or pip install py-spy)")
    return found


def summarize(raw: Path, top: int) -> None:
    """Samples by module (the frame the CPU was in) and the hottest oqron_nats frames."""
    by_module: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        by_module[module_of(frames[-1])] += samples
        for frame in {re.sub(r":\d+\)", ")", f) for f in frames if "oqron_nats" in f}:
            inclusive[frame] += samples
    print(f"\n{total} samples; where the CPU was, by module:")
    for module, samples in by_module.most_common(top):
        print(f"  {samples / total:6.1%}  {module}")
    print("oqron_nats frames, including what they call:")
    for frame, samples in inclusive.most_common(top):
        print(f"  {samples / total:6.1%}  {frame}")


def module_of(frame: str) -> str:
    """A frame's module family: an oqron_nats file, nats-py, asyncio, or the file's name."""
    match = FRAME_FILE.search(frame)
    path = match.group("file") if match else frame
    if "oqron_nats" in path:
        return "oqron_nats/" + path.split("oqron_nats/")[-1]
    if Path(path).name == "selectors.py":
        return "asyncio"  # the event loop waiting on and reading its sockets
    for family in ("nats", "asyncio", "msgspec", "structlog", "opentelemetry"):
        if path.startswith(f"{family}/") or f"/{family}/" in path:
            return family
    return Path(path).name


def main() -> None:
    """Parse the options, run, print."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--guaranteed", type=int, choices=(0, 1), default=1)
    parser.add_argument("--seconds", type=int, default=5, help="how long py-spy samples")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count the worker's instructions per job under callgrind instead (slow, repeatable)",
    )
    parser.add_argument("--keep", type=Path, help="also copy py-spy's raw samples to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="oqron-profile-") as tmp:
        server = LocalServer(store_dir=Path(tmp) / "store").start()
        try:
            started = time.monotonic()
            if args.instructions:
                asyncio.run(count_instructions(server.url, args, Path(tmp)))
            else:
                asyncio.run(profile(server.url, server.pid, args, Path(tmp) / "profile.raw"))
            print(f"(whole run {time.monotonic() - started:.0f} s)")
        finally:
            server.close()
        if not args.instructions:
            summarize(Path(tmp) / "profile.raw", args.top)
            if args.keep:
                shutil.copyfile(Path(tmp) / "profile.raw", args.keep)


if __name__ == "__main__":
    main()
