"""Benchmark: the reference server's latency and throughput on a small scikit-learn model.

Variants, each serving the same LogisticRegression (10 features) over the Open Inference
Protocol REST API, pinned to one core (``taskset -c 0``) while the load generator ``hey``
runs on the other:

- ``modelops serve`` with drift and fairness measurement on;
- ``modelops serve`` with them off (``MODELOPS_MONITORING=off``);
- MLServer 1.7 with mlserver-sklearn, if ``--mlserver-bin`` points at its ``mlserver``.

    .venv/bin/python -m bench.serving [--mlserver-bin /path/to/venv/bin/mlserver]

Writes bench/results/serving.json and prints medians over ``--runs`` runs of ``--seconds`` each.
"""

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
HEY_VERSION = "v0.1.5"
FEATURES = 10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def hey_binary() -> str:
    found = shutil.which("hey")
    if found:
        return found
    cache = Path(os.environ.get("MODELOPS_CACHE_DIR", Path.home() / ".cache" / "modelops")) / f"hey-{HEY_VERSION}"
    if not (cache / "hey").exists():
        environment = dict(os.environ, GOBIN=str(cache), GOFLAGS="", GOTOOLCHAIN="local")
        subprocess.run(["go", "install", f"github.com/rakyll/hey@{HEY_VERSION}"], check=True, env=environment, timeout=600)
    return str(cache / "hey")


def pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") else []


def train(folder: Path) -> tuple[Path, Path, list[list[float]]]:
    import joblib
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (5000, FEATURES))
    labels = (features @ rng.normal(0, 1, FEATURES) > 0).astype(int)
    model = folder / "model.joblib"
    joblib.dump(LogisticRegression().fit(features, labels), model)
    data = folder / "train.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"f{i}" for i in range(FEATURES)])
        writer.writerows(features.tolist())
    return model, data, rng.normal(0, 1, (8, FEATURES)).tolist()


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become ready")


def load(hey: str, url: str, body: Path, seconds: int, concurrency: int) -> dict[str, float]:
    output = subprocess.run(
        [*pinned(1), hey, "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", "application/json", "-D", str(body), url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"50%+ in ([\d.]+) secs", output).group(1))  # type: ignore[union-attr]
    p99 = float(re.search(r"99%+ in ([\d.]+) secs", output).group(1))  # type: ignore[union-attr]
    statuses = re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)
    errors = sum(int(count) for status, count in statuses if status != "200")
    return {"rps": rps, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000, "non_200": errors}


def start_modelops(model: Path, profile: Path, port: int, monitoring: bool, log: Path) -> subprocess.Popen[bytes]:
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    environment = dict(
        os.environ, MODEL_NAME="bench", MODEL_VERSION="1", MODEL_URI=model.as_uri(), MODEL_DIGEST=digest,
        MODEL_FORMAT="sklearn", MODEL_PROFILE_URI=profile.as_uri(), MODEL_SENSITIVE_ATTRIBUTES="segment",
        MODELOPS_MONITORING="on" if monitoring else "off", MODELOPS_DRIFT_INTERVAL_SECONDS="5",
    )
    return subprocess.Popen(
        [*pinned(0), sys.executable, "-m", "modelops.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=environment, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )


def start_mlserver(binary: str, model: Path, folder: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    models = folder / "mlserver"
    (models / "bench").mkdir(parents=True, exist_ok=True)
    shutil.copy(model, models / "bench" / "model.joblib")
    (models / "bench" / "model-settings.json").write_text(json.dumps(
        {"name": "bench", "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib", "version": "1"}}
    ))
    (models / "settings.json").write_text(json.dumps(
        {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "host": "127.0.0.1", "parallel_workers": 0}
    ))
    return subprocess.Popen([*pinned(0), binary, "start", str(models)], stdout=log.open("wb"), stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--mlserver-bin", default=os.environ.get("MLSERVER_BIN"))
    arguments = parser.parse_args()
    hey = hey_binary()
    folder = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    model, data, rows = train(folder)
    profile = folder / "profile.json"
    subprocess.run([sys.executable, "-m", "modelops.cli", "profile", "build", str(data), "-o", str(profile)], check=True)
    body = folder / "request.json"
    body.write_text(json.dumps({"inputs": [
        {"name": "input-0", "shape": [len(rows), FEATURES], "datatype": "FP64", "data": [v for row in rows for v in row]},
        {"name": "segment", "shape": [len(rows)], "datatype": "BYTES", "data": ["a", "b"] * (len(rows) // 2)},
    ]}))
    mlserver_body = folder / "request-mlserver.json"
    mlserver_body.write_text(json.dumps({"inputs": [json.loads(body.read_text())["inputs"][0]]}))
    variants = [("modelops serve, monitoring on", True), ("modelops serve, monitoring off", False)]
    if arguments.mlserver_bin:
        variants.append(("MLServer 1.7 (mlserver-sklearn)", None))
    results = []
    for name, monitoring in variants:
        port = free_port()
        log = folder / f"{len(results)}.log"
        process = (
            start_mlserver(arguments.mlserver_bin, model, folder, port, log) if monitoring is None
            else start_modelops(model, profile, port, monitoring, log)
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/v2/models/bench/ready", timeout=120)
            url = f"http://127.0.0.1:{port}/v2/models/bench/infer"
            payload = mlserver_body if monitoring is None else body
            load(hey, url, payload, 3, arguments.concurrency)  # warm-up
            runs = [load(hey, url, payload, arguments.seconds, arguments.concurrency) for _ in range(arguments.runs)]
        finally:
            process.terminate()
            process.wait(timeout=30)
        row = {"variant": name} | {key: round(statistics.median(run[key] for run in runs), 2) for key in runs[0]}
        results.append(row)
        print(row)
    RESULTS.mkdir(exist_ok=True)
    report = {"benchmark": "serving", "date": time.strftime("%Y-%m-%d"), "rows_per_request": len(rows),
              "concurrency": arguments.concurrency, "runs": arguments.runs, "seconds": arguments.seconds, "results": results}
    (RESULTS / "serving.json").write_text(json.dumps(report, indent=2))
    print("\n| server | requests/s | p50 | p99 | non-200 |\n|---|---|---|---|---|")
    for row in results:
        print(f"| {row['variant']} | {row['rps']:.0f} | {row['p50_ms']:.1f} ms | {row['p99_ms']:.1f} ms | {row['non_200']:.0f} |")


if __name__ == "__main__":
    main()
