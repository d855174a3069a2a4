"""Starting, checking and stopping the devcluster's processes by PID.

Each process starts in its own session (so it outlives the ``modelops`` command
that started it, and a Ctrl-C in that terminal does not reach it) with stdout and
stderr appended to its log file. A :class:`ProcessRecord` keeps the PID **and**
the kernel's start time of that PID, so a PID that was reused by an unrelated
process after a crash is never mistaken for ours, and never signalled.
"""

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STOP_GRACE_SECONDS = 10.0

# Popen objects of children this Python process started, kept so they can be reaped
# (no zombies while a test session runs) and are never garbage-collected while running.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcessRecord:
    """A process the devcluster started; serialised into ``state.json``."""

    name: str
    pid: int
    start_ticks: int
    log: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ProcessRecord":
        return cls(name=str(data["name"]), pid=int(data["pid"]), start_ticks=int(data["start_ticks"]), log=str(data["log"]))


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _reap(pid: int) -> None:
    """Collects the exit status of our own exited child, so it is not left a zombie."""
    child = _children.get(pid)
    if child is not None:
        child.poll()


def is_running(record: ProcessRecord) -> bool:
    """True when the PID is alive, not a zombie, and is still the process we started."""
    _reap(record.pid)
    fields = _stat_fields(record.pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == record.start_ticks


def spawn(
    name: str, argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> ProcessRecord:
    """Starts ``argv`` in the background with output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        output.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        output.flush()
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    _children[child.pid] = child
    ticks = start_ticks(child.pid)
    return ProcessRecord(name=name, pid=child.pid, start_ticks=ticks if ticks is not None else -1, log=str(log))


def exit_code(record: ProcessRecord) -> int | None:
    """The exit code of a child this process started, when it has exited (else None)."""
    child = _children.get(record.pid)
    return child.poll() if child is not None else None


def stop(record: ProcessRecord, *, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL. Never signals a reused PID."""
    if not is_running(record):
        _reap(record.pid)
        return
    _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_running(record):
            return
        time.sleep(0.05)
    _signal_group(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_running(record) and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)  # start_new_session=True made pid the group leader
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, signum)
