"""The layers stay apart: API models and planning do no I/O; only handlers import kopf."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "modelops"
IO_MODULES = {"kopf", "httpx", "requests", "urllib3", "socket", "subprocess", "kubernetes.client", "kubernetes.config",
              "prometheus_api_client", "modelops.kube", "modelops.reconciler", "modelops.handlers", "modelops.devcluster"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _forbidden(names: set[str]) -> set[str]:
    return {name for name in names for banned in IO_MODULES if name == banned or name.startswith(banned + ".")}


def test_api_and_planning_do_no_io() -> None:
    for folder in ("api", "planning"):
        for path in (PACKAGE / folder).glob("*.py"):
            assert not _forbidden(_imports(path)), f"{path.name} imports {_forbidden(_imports(path))}"


def test_only_handlers_and_the_cli_import_kopf() -> None:
    importers = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py") if any(n.split(".")[0] == "kopf" for n in _imports(path))}
    assert importers <= {"handlers.py", "cli.py"}


CLOCK_READS = {("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"), ("time", "time"),
               ("time", "monotonic"), ("time", "time_ns"), ("time", "gmtime"), ("time", "localtime")}


def _clock_reads(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else owner.id if isinstance(owner, ast.Name) else ""
            if (owner_name, node.func.attr) in CLOCK_READS:
                found.add(f"{owner_name}.{node.func.attr}() at line {node.lineno}")
    return found


def test_decisions_read_no_clock_the_handlers_now_is_the_one_clock() -> None:
    decision_code = [*(PACKAGE / "api").glob("*.py"), *(PACKAGE / "planning").glob("*.py"),
                     PACKAGE / "reconciler.py", PACKAGE / "analysis_runner.py"]
    for path in decision_code:
        assert not _clock_reads(path), f"{path.name} reads the clock: {_clock_reads(path)}"
    assert _clock_reads(PACKAGE / "handlers.py"), "the handlers' _now() should be found by this check"
