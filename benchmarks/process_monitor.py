"""Wall time and peak memory of a command and all its child processes (nnU-Net works in several)."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path


def _tree_rss(root: int) -> int:
    """Resident memory of ``root`` and its descendants, in bytes (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid, ppid = int(entry), int(fields.get("PPid", "0"))
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_measured(command: list[str], env: dict | None = None, log: Path | None = None,
                 interval: float = 0.2) -> tuple[float, int]:
    """Run ``command``; return (wall seconds, peak summed RSS of its process tree in bytes). Raises on failure."""
    start = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        stop = threading.Event()

        def sample():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _tree_rss(process.pid))
                time.sleep(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        stop.set()
        sampler.join()
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited {code}" + (f"; see {log}" if log else ""))
    return wall, peak
