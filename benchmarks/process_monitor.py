"""Wall time and peak memory of a command and all its child processes (nnU-Net works in several): resident (RSS)
and proportional (PSS: shared pages divided among the processes sharing them, so a tree's sum counts them once)."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) of ``root`` and its descendants, in bytes (Linux /proc)."""
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
    total, pss, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        pss += _pss(pid) if pid in rss else 0
        stack.extend(children.get(pid, []))
    return total, pss


def run_measured(command: list[str], env: dict | None = None, log: Path | None = None,
                 interval: float = 0.2, pss: bool = False):
    """Run ``command``; return (wall seconds, peak summed RSS of its process tree in bytes), and with ``pss=True``
    also the peak summed PSS. Raises on failure."""
    start = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = peak_pss = 0
        stop = threading.Event()

        def sample():
            nonlocal peak, peak_pss
            while not stop.is_set():
                rss, proportional = _tree_memory(process.pid)
                peak, peak_pss = max(peak, rss), max(peak_pss, proportional)
                time.sleep(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        stop.set()
        sampler.join()
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited {code}" + (f"; see {log}" if log else ""))
    return (wall, peak, peak_pss) if pss else (wall, peak)
