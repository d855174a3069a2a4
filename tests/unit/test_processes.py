"""Processes are tracked by PID plus start time, and stopped by PID."""

import subprocess
import sys
from pathlib import Path

from modelops.devcluster import processes
from modelops.devcluster.processes import ProcessRecord


def test_spawn_runs_in_background_logs_output_and_stop_ends_it(tmp_path: Path) -> None:
    log = tmp_path / "sleeper.log"
    record = processes.spawn("sleeper", [sys.executable, "-c", "print('hello', flush=True); import time; time.sleep(60)"], log)
    try:
        assert processes.is_running(record)
        assert record.start_ticks > 0
    finally:
        processes.stop(record, grace=5)
    assert not processes.is_running(record)
    assert "hello" in log.read_text()
    assert "starting:" in log.read_text()


def test_a_reused_pid_is_not_ours_and_is_never_signalled(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        impostor = ProcessRecord("etcd", bystander.pid, start_ticks=1, log=str(tmp_path / "x.log"))
        assert not processes.is_running(impostor)
        processes.stop(impostor)
        assert bystander.poll() is None  # still alive: stop() refused to signal it
    finally:
        bystander.kill()
        bystander.wait()


def test_exit_code_of_a_failed_child_is_reported(tmp_path: Path) -> None:
    record = processes.spawn("failing", [sys.executable, "-c", "raise SystemExit(7)"], tmp_path / "f.log")
    for _ in range(200):
        if processes.exit_code(record) is not None:
            break
        subprocess.run(["sleep", "0.02"], check=True)
    assert processes.exit_code(record) == 7
    assert not processes.is_running(record)


def test_record_round_trips_through_json() -> None:
    record = ProcessRecord("kwok", 123, 456, "/tmp/kwok.log")
    assert ProcessRecord.from_json(record.to_json()) == record
