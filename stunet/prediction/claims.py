"""Claims on outputs, so that processes sharing an output folder (the parts of a cohort, overlapping runs, the same
part started twice, on one machine or many over a shared file system) never predict and write the same output twice.

Before a process predicts ``OUT/case.nii.gz`` it creates ``OUT/.stunet-partial/case.nii.gz.lock`` with
``O_CREAT | O_EXCL``: one process wins, the others leave the case to it. The claim names its host, its process id (with
the process-id namespace) and a random token; while the case is predicted a background thread refreshes its
modification time every ``heartbeat`` seconds, and the claim is removed when the output is written (or the case
failed), at the latest when the process exits normally.

A claim is stale, and the next process to look removes it and claims the case itself, when

- its process is gone: the claim is from this host and process-id namespace and no process has that id; or
- it was not refreshed for ``stale_after`` seconds (default 600, ten heartbeats): its process died on another machine,
  or hangs. Clocks of machines that share a folder must agree to within that margin.

A process whose claim was taken from it writes nothing for that case.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from stunet.atomic import refuse_links
from stunet.errors import CaseError

HEARTBEAT_SECONDS = 60.0
STALE_AFTER_SECONDS = 600.0


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class Claims:
    """The claims of this process in ``folder``; at most one at a time (a process predicts one case at a time)."""

    def __init__(self, folder: Path, heartbeat: float = HEARTBEAT_SECONDS, stale_after: float = STALE_AFTER_SECONDS):
        self.folder = Path(folder)
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "pidns": _pid_namespace()}
        self.held: tuple[Path, str] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        atexit.register(self.close)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.lock"

    def claim(self, name: str) -> bool:
        """Claim output ``name`` (releasing the previous claim). False: another live process holds it."""
        self.release()
        path = self.path(name)
        refuse_links(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not path.is_symlink():
            raise CaseError(f"{path}: a folder where this case's claim file belongs; remove it (the case is not "
                            f"predicted while it is there)")
        token = secrets.token_hex(8)
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                stale, seen = self.judge(path)
                if not stale:
                    return False
                self._break(path, seen)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({**self.me, "token": token, "since": time.time()}, f)
            with self._lock:
                self.held = (path, token)
            self._start_heartbeat()
            return True
        return False

    def holds(self) -> bool:
        """Whether the current claim is still this process's (nobody judged it stale and took it)."""
        if self.held is None:
            return False
        path, token = self.held
        try:
            return json.loads(path.read_text()).get("token") == token
        except (OSError, ValueError):
            return False

    def release(self) -> None:
        with self._lock:
            held, self.held = self.held, None
        if held is not None and self._still(held):
            with contextlib.suppress(OSError):
                held[0].unlink()

    def close(self) -> None:
        self.release()
        self._stop.set()
        atexit.unregister(self.close)

    def judge(self, path: Path) -> tuple[bool, str]:
        """(whether the claim at ``path`` is stale, its text as read)."""
        try:
            text = path.read_text()
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True, ""
        if age > self.stale_after:
            return True, text
        try:
            owner = json.loads(text)
        except ValueError:  # being written this very moment, or not ours: only age makes it stale
            return False, text
        same_namespace = owner.get("host") == self.me["host"] and owner.get("pidns") == self.me["pidns"]
        if same_namespace and isinstance(owner.get("pid"), int):
            if owner["pid"] == self.me["pid"]:
                return True, text  # a leftover of an earlier process with our id: not held by us now
            return not _process_exists(owner["pid"]), text
        return False, text

    # -- internals -----------------------------------------------------------------------------------------------
    def _still(self, held: tuple[Path, str]) -> bool:
        try:
            return json.loads(held[0].read_text()).get("token") == held[1]
        except (OSError, ValueError):
            return False

    def _break(self, path: Path, seen: str) -> None:
        """Remove a stale claim, unless it was replaced since it was judged (then put the new one back)."""
        grave = path.with_name(f"{path.name}.{secrets.token_hex(4)}.stale")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return
        try:
            if grave.read_text() != seen:  # another process claimed the case after our look: its claim is valid
                with contextlib.suppress(OSError):
                    os.link(grave, path)
        finally:
            with contextlib.suppress(OSError):
                grave.unlink()

    def _start_heartbeat(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="stunet-claims", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with self._lock:
                held = self.held
            if held is not None and self._still(held):
                with contextlib.suppress(OSError):
                    os.utime(held[0])
