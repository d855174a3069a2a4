"""Benchmark 7: memory after creating and deleting 10 000 ModelDeployments returns to its baseline.

The operator's own code in one process, without an apiserver: the real kopf handlers
(``modelops.handlers``: watch event, pass, analysis tick, the periodic pass's LIST) run over
the unit tests' in-memory ClusterApi (``tests.unit.test_reconciler.FakeCluster``), so what is
measured is the memory the operator keeps per object, not the client's or the apiserver's.

Each round creates ``--count`` ModelDeployments (watch event ADDED, one pass each: children and
status written, metric series created) and deletes them again, a third each way an object can
go: a DELETED event; a pass that reads 404; vanishing from the periodic LIST with no event.
Measured after a warm-up round (imports, caches, interned strings), then after each round:

- VmRSS of this process (``/proc/self/status``) after ``gc.collect()`` and glibc's
  ``malloc_trim(0)`` (so the allocator's cached free memory is not counted as kept);
- Python heap bytes held (``tracemalloc``; off with ``--no-heap``), which unlike RSS does not
  depend on the allocator giving pages back to the kernel;
- the entries of every per-object structure (must be 0) and the metric series labelled with a
  deleted object (must be 0).

    .venv/bin/python -m bench.churn [--count 10000] [--rounds 5]

Writes bench/results/churn.json and prints a table.
"""

import argparse
import ctypes
import gc
import logging
import statistics
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kopf

from bench import common
from modelops import handlers
from modelops.metrics import operator_metrics as metrics
from modelops.notify import Outbox
from modelops.tracking import RetryScheduler
from tests.unit.test_reconciler import FakeCluster, body

NAMESPACE = "churn"


def rss_kib() -> int:
    return common.resident_kib(Path("/proc/self/status").read_text())


def settled_rss_kib() -> int:
    """VmRSS after a full collection and, with glibc, ``malloc_trim(0)``: freed memory the allocator
    still holds on to (its free lists, partly used arenas) is handed back first, so what remains is
    memory still in use rather than the allocator's high-water mark."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: plain VmRSS
    return rss_kib()


def series_count() -> int:
    return sum(len(collector._metrics) for collector in metrics.PER_OBJECT)


def memo_for(cluster: FakeCluster) -> kopf.Memo:
    memo = kopf.Memo()
    memo.cluster, memo.prometheus = cluster, None
    memo.retries = RetryScheduler(lambda key: None)
    memo.outbox = Outbox()
    pool = ThreadPoolExecutor(2)
    memo.periodic_pool = memo.query_pool = memo.analysis_pool = memo.triggered_pool = pool
    return memo


def one_round(memo: kopf.Memo, cluster: FakeCluster, count: int, round_number: int) -> dict[str, Any]:
    logger = logging.getLogger("modelops")
    names = [f"m{round_number}-{index}" for index in range(count)]
    started = time.monotonic()
    for name in names:
        document = body()
        document["metadata"] |= {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}"}
        cluster.add(document)
        handlers.modeldeployment_changed(type="ADDED", body=kopf.Body(cluster.get_modeldeployment(NAMESPACE, name)),
                                         namespace=NAMESPACE, name=name, memo=memo, logger=logger)
    peak = {"rss_kib": rss_kib(), "tracked": len(handlers._registry), "series": series_count()}
    cluster.calls.clear()  # the fake's own call log, not the operator's memory
    for index, name in enumerate(names):
        cluster.remove(NAMESPACE, name)
        if index % 3 == 0:
            handlers.modeldeployment_changed(type="DELETED", body=kopf.Body(body() | {"metadata": {"name": name, "namespace": NAMESPACE}}),
                                             namespace=NAMESPACE, name=name, memo=memo, logger=logger)
        elif index % 3 == 1:
            handlers._run_pass(NAMESPACE, name, memo, logger)  # reads 404
        # the rest vanish without an event: the periodic pass's LIST finds them
    handlers.forget_vanished(memo)
    cluster.calls.clear()
    return {"seconds": round(time.monotonic() - started, 1), "peak": peak}


def heap_bytes() -> int:
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


def measure(count: int, rounds: int, trace_heap: bool = True) -> dict[str, Any]:
    logging.getLogger("modelops").setLevel(logging.WARNING)
    cluster = FakeCluster(body())
    cluster.remove("ns", "m")
    memo = memo_for(cluster)
    if trace_heap:
        tracemalloc.start()
    one_round(memo, cluster, count, 0)  # warm-up: imports, caches, the allocator's first arenas
    baseline = {"rss_kib": settled_rss_kib(), "heap_bytes": heap_bytes()}
    common.log(f"baseline after a warm-up round of {count}: RSS {baseline['rss_kib'] / 1024:.1f} MiB")
    results = []
    for number in range(1, rounds + 1):
        result = one_round(memo, cluster, count, number)
        result |= {
            "rss_kib": settled_rss_kib(),
            "heap_bytes": heap_bytes(),
            "structures": handlers._registry.sizes() | {"dispatched": len(handlers._dispatched),
                                                        "retries": memo.retries.pending(), **memo.outbox.sizes()},
            "series": series_count(),
        }
        common.log(f"round {number}: peak RSS {result['peak']['rss_kib'] / 1024:.1f} MiB with {result['peak']['tracked']} tracked, "
                   f"after delete {result['rss_kib'] / 1024:.1f} MiB, heap {result['heap_bytes'] - baseline['heap_bytes']:+d} B, "
                   f"structures {result['structures']}, series {result['series']}")
        results.append(result)
    tracemalloc.stop()
    after = [r["rss_kib"] - baseline["rss_kib"] for r in results]
    heap = [r["heap_bytes"] - baseline["heap_bytes"] for r in results]
    return {
        "count": count,
        "rounds": results,
        "baseline": baseline,
        "rss_after_delete_minus_baseline_kib": {"median": statistics.median(after), "min": min(after), "max": max(after)},
        "heap_after_delete_minus_baseline_bytes": {"median": statistics.median(heap), "min": min(heap), "max": max(heap)},
        "peak_rss_minus_baseline_kib": statistics.median(r["peak"]["rss_kib"] - baseline["rss_kib"] for r in results),
        "bytes_kept_per_deleted_object": round(statistics.median(heap) / count, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-heap", action="store_true",
                        help="no tracemalloc (3x faster; its own bookkeeping no longer shares the allocator): RSS only")
    arguments = parser.parse_args()
    report = {"machine": common.machine(), "source": common.source(),
              "heap_traced": not arguments.no_heap, **measure(arguments.count, arguments.rounds, not arguments.no_heap)}
    path = common.write_report("churn" if not arguments.no_heap else "churn-rss-only", report)
    rss, heap = report["rss_after_delete_minus_baseline_kib"], report["heap_after_delete_minus_baseline_bytes"]
    print(common.markdown_table(
        ["created and deleted per round", "rounds", "peak RSS over baseline", "RSS after delete over baseline (median, range)",
         "Python heap after delete over baseline (median, range)"],
        [[report["count"], len(report["rounds"]), f"{report['peak_rss_minus_baseline_kib'] / 1024:.1f} MiB",
          f"{rss['median']} KiB ({rss['min']} to {rss['max']})", f"{heap['median']} B ({heap['min']} to {heap['max']})"]],
    ))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
