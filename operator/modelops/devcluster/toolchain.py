"""Finds or builds every binary the devcluster runs, and says what it is doing.

Resolution order for each binary:

1. ``$KUBEBUILDER_ASSETS/<name>`` (the envtest convention) for etcd, kube-apiserver,
   kube-controller-manager, kube-scheduler, kubectl and kwok; ``$PROMETHEUS_BIN`` for Prometheus.
2. The version-keyed cache (``layout.CacheLayout``).
3. A build: ``go build`` inside the pinned module ``hack/tools`` (Kubernetes and
   etcd), ``go install sigs.k8s.io/kwok/cmd/kwok@<version>``, and
   ``apt-get download`` + ``dpkg-deb -x`` for Debian's Prometheus (so that no
   system service is installed or started).

Builds write to a temporary name and rename, so an interrupted build never
leaves a half-written binary in the cache. Go output goes to the cache's
``build.log``; a failure names it.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from modelops.devcluster import versions
from modelops.devcluster.errors import DevclusterError
from modelops.devcluster.layout import CacheLayout

KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
GO_BUILD_TIMEOUT_SECONDS = 60 * 60
DOWNLOAD_TIMEOUT_SECONDS = 10 * 60

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of everything the devcluster starts, plus the data files it needs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    kwok_stages: Path
    prometheus: Path
    gateway_api_crds: Path


def tools_module_dir() -> Path:
    """The pinned Go module (``hack/tools``) in this source checkout."""
    if explicit := os.environ.get("MODELOPS_TOOLS_MODULE"):
        return Path(explicit).resolve()
    return Path(__file__).resolve().parents[3] / "hack" / "tools"


def kubernetes_ldflags(version: str = versions.KUBERNETES_VERSION) -> str:
    """``-X`` flags that stamp the version into both places Kubernetes reads it from.

    >>> "k8s.io/client-go/pkg/version.gitMinor=36" in kubernetes_ldflags("v1.36.3")
    True
    """
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"not a Kubernetes release version: {version!r}")
    major, minor = match.group(1), match.group(2)
    stamps = {"gitVersion": version, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean"}
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in stamps.items()]
    return " ".join(flags)


def parse_go_version(text: str) -> tuple[int, int]:
    """The (major, minor) of a ``go env GOVERSION`` answer such as ``go1.26.8``.

    >>> parse_go_version("go1.26.8")
    (1, 26)
    """
    match = re.match(r"go(\d+)\.(\d+)", text.strip())
    if not match:
        raise DevclusterError(f"cannot read the Go version from {text.strip()!r}")
    return int(match.group(1)), int(match.group(2))


def resolve(cache: CacheLayout, *, progress: Progress = print) -> Binaries:
    """Every binary's path, building or downloading what is missing."""
    assets = _kubebuilder_assets()
    found = {name: _asset(assets, name) for name in ("etcd", *KUBERNETES_COMMANDS, "kwok")}
    steps = _missing_steps(cache, found)
    for index, (label, step) in enumerate(steps, start=1):
        progress(f"[build {index}/{len(steps)}] {label} ...")
        started = time.monotonic()
        step()
        progress(f"[build {index}/{len(steps)}] {label}: done in {time.monotonic() - started:.0f}s")
    bin_dir = cache.kubernetes_bin
    return Binaries(
        etcd=found["etcd"] or bin_dir / "etcd",
        kube_apiserver=found["kube-apiserver"] or bin_dir / "kube-apiserver",
        kube_controller_manager=found["kube-controller-manager"] or bin_dir / "kube-controller-manager",
        kube_scheduler=found["kube-scheduler"] or bin_dir / "kube-scheduler",
        kubectl=found["kubectl"] or bin_dir / "kubectl",
        kwok=found["kwok"] or cache.kwok_dir / "bin" / "kwok",
        kwok_stages=cache.kwok_stages / "fast",
        prometheus=_prometheus_binary(cache) or _must_exist_after_build(cache),
        gateway_api_crds=cache.gateway_api_crds,
    )


def _missing_steps(cache: CacheLayout, found: Mapping[str, Path | None]) -> list[tuple[str, Callable[[], None]]]:
    steps: list[tuple[str, Callable[[], None]]] = []
    bin_dir = cache.kubernetes_bin
    if not found["etcd"] and not (bin_dir / "etcd").is_file():
        steps.append((f"etcd {versions.ETCD_VERSION} (go build; cold: ~2 min)", lambda: _build_etcd(cache)))
    for command in KUBERNETES_COMMANDS:
        if not found[command] and not (bin_dir / command).is_file():
            steps.append(
                (
                    f"{command} {versions.KUBERNETES_VERSION} (go build; cold: 1-5 min each)",
                    lambda command=command: _build_kubernetes_command(cache, command),  # type: ignore[misc]
                )
            )
    if not found["kwok"] and not (cache.kwok_dir / "bin" / "kwok").is_file():
        steps.append((f"kwok {versions.KWOK_VERSION} (go install; cold: ~5 min)", lambda: _build_kwok(cache)))
    if not (cache.kwok_stages / "fast" / "kustomization.yaml").is_file():
        steps.append((f"kwok {versions.KWOK_VERSION} stages (go mod download)", lambda: _copy_kwok_stages(cache)))
    if not any(cache.gateway_api_crds.glob("*.yaml")):
        steps.append(
            (f"Gateway API {versions.GATEWAY_API_VERSION} CRDs (go mod download)", lambda: _copy_gateway_crds(cache))
        )
    if not _prometheus_binary(cache):
        steps.append(("Prometheus (apt-get download + dpkg-deb -x)", lambda: _download_prometheus(cache)))
    return steps


def _kubebuilder_assets() -> Path | None:
    value = os.environ.get("KUBEBUILDER_ASSETS")
    return Path(value).expanduser() if value else None


def _asset(assets: Path | None, name: str) -> Path | None:
    if assets and (assets / name).is_file() and os.access(assets / name, os.X_OK):
        return (assets / name).resolve()
    return None


def _prometheus_binary(cache: CacheLayout) -> Path | None:
    if explicit := os.environ.get("PROMETHEUS_BIN"):
        path = Path(explicit).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise DevclusterError(f"PROMETHEUS_BIN={explicit} is not an executable file; unset it or fix the path")
        return path.resolve()
    candidates = sorted(cache.prometheus_dir.glob("*/usr/bin/prometheus"))
    return candidates[-1] if candidates else None


def _must_exist_after_build(cache: CacheLayout) -> Path:
    path = _prometheus_binary(cache)
    if path is None:
        raise DevclusterError("Prometheus is still missing after its download step", log=cache.build_log)
    return path


# --- Go ---------------------------------------------------------------------


def _go_environment() -> dict[str, str]:
    """The environment of every ``go`` call: local toolchain only, static binaries."""
    environment = dict(os.environ)
    environment.update(GOTOOLCHAIN="local", CGO_ENABLED="0", GOFLAGS="-mod=readonly -buildvcs=false")
    return environment


def check_go() -> str:
    """The ``go`` executable, or a clear error when it is missing or too old."""
    go = shutil.which("go")
    if go is None:
        raise DevclusterError(
            "Go is not installed (no `go` on PATH): install Go "
            f"{versions.MINIMUM_GO[0]}.{versions.MINIMUM_GO[1]}+ from https://go.dev/dl, "
            "or point KUBEBUILDER_ASSETS at prebuilt etcd, kube-apiserver, kube-controller-manager, "
            "kube-scheduler and kwok"
        )
    answer = subprocess.run(
        [go, "env", "GOVERSION"], capture_output=True, text=True, timeout=60, env=_go_environment(), check=False
    )
    found = parse_go_version(answer.stdout)
    if found < versions.MINIMUM_GO:
        raise DevclusterError(
            f"Go {found[0]}.{found[1]} is too old: Kubernetes {versions.KUBERNETES_VERSION} needs "
            f"Go {versions.MINIMUM_GO[0]}.{versions.MINIMUM_GO[1]}+"
        )
    return go


def _run_logged(argv: list[str], *, cache: CacheLayout, cwd: Path, env: Mapping[str, str] | None = None) -> None:
    """Runs a build command, appending its output to the build log; raises with the log path on failure."""
    cache.root.mkdir(parents=True, exist_ok=True)
    with cache.build_log.open("a") as log:
        log.write(f"\n$ (cd {cwd} && {' '.join(argv)})\n")
        log.flush()
        try:
            completed = subprocess.run(
                argv,
                cwd=cwd,
                env=dict(env or _go_environment()),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=GO_BUILD_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise DevclusterError(f"`{argv[0]} {argv[1]}` timed out after {error.timeout:.0f}s", log=cache.build_log)
    if completed.returncode != 0:
        raise DevclusterError(
            f"`{' '.join(argv[:2])} ... {argv[-1]}` failed with exit code {completed.returncode}: "
            f"{_last_line(cache.build_log)}",
            log=cache.build_log,
        )


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


@contextmanager
def _atomic_output(final: Path) -> Iterator[Path]:
    """A temporary path next to ``final`` that becomes ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        yield temporary
        temporary.replace(final)
    finally:
        temporary.unlink(missing_ok=True)


def _go_build(cache: CacheLayout, package: str, output: Path, ldflags: str) -> None:
    go = check_go()
    module = tools_module_dir()
    if not (module / "go.mod").is_file():
        raise DevclusterError(
            f"the pinned Go module is missing at {module}: run modelops from a source checkout "
            "(pip install -e .) or set MODELOPS_TOOLS_MODULE"
        )
    with _atomic_output(output) as temporary:
        _run_logged(
            [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(temporary), package], cache=cache, cwd=module
        )


def _build_etcd(cache: CacheLayout) -> None:
    # The package path ends in /v3; -o names the binary, which would otherwise be "server".
    _go_build(cache, "go.etcd.io/etcd/server/v3", cache.kubernetes_bin / "etcd", "-s -w")


def _build_kubernetes_command(cache: CacheLayout, command: str) -> None:
    _go_build(cache, f"k8s.io/kubernetes/cmd/{command}", cache.kubernetes_bin / command, kubernetes_ldflags())


def _build_kwok(cache: CacheLayout) -> None:
    go = check_go()
    final = cache.kwok_dir / "bin" / "kwok"
    with tempfile.TemporaryDirectory(prefix="kwok-build-", dir=cache.root) as scratch:
        environment = _go_environment() | {"GOBIN": scratch, "GOFLAGS": ""}
        _run_logged(
            [go, "install", "-trimpath", "-ldflags", "-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{versions.KWOK_VERSION}"],
            cache=cache,
            cwd=Path(scratch),
            env=environment,
        )
        with _atomic_output(final) as temporary:
            shutil.copyfile(Path(scratch) / "kwok", temporary)
            temporary.chmod(0o755)


def _module_dir(cache: CacheLayout, module: str) -> Path:
    """The unpacked module in Go's module cache (downloading it through the proxy if needed)."""
    go = check_go()
    with tempfile.TemporaryDirectory(prefix="gomod-", dir=cache.root) as scratch:
        answer = subprocess.run(
            [go, "mod", "download", "-json", module],
            cwd=scratch,
            capture_output=True,
            text=True,
            timeout=DOWNLOAD_TIMEOUT_SECONDS,
            env=_go_environment() | {"GOFLAGS": ""},
            check=False,
        )
    if answer.returncode != 0:
        raise DevclusterError(f"`go mod download {module}` failed: {answer.stdout.strip() or answer.stderr.strip()}")
    return Path(json.loads(answer.stdout)["Dir"])


def _copy_tree_writable(source: Path, destination: Path, pattern: str = "*") -> None:
    """Copies files out of Go's read-only module cache into a writable cache folder, atomically."""
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for file in sorted(source.rglob(pattern)):
        if file.is_file():
            target = partial / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
            target.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    shutil.rmtree(destination, ignore_errors=True)
    partial.rename(destination)


def _copy_kwok_stages(cache: CacheLayout) -> None:
    source = _module_dir(cache, f"sigs.k8s.io/kwok@{versions.KWOK_VERSION}") / "kustomize" / "stage"
    _copy_tree_writable(source, cache.kwok_stages)


def _copy_gateway_crds(cache: CacheLayout) -> None:
    module = _module_dir(cache, f"sigs.k8s.io/gateway-api@{versions.GATEWAY_API_VERSION}")
    _copy_tree_writable(module / "config" / "crd" / "standard", cache.gateway_api_crds, "gateway.networking.k8s.io_*.yaml")


# --- Prometheus from Debian ---------------------------------------------------


def _download_prometheus(cache: CacheLayout) -> None:
    """``apt-get download`` the Debian package and unpack it: no maintainer scripts, no service."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DevclusterError(
                f"`{tool}` is missing, so Prometheus cannot be fetched from Debian: set PROMETHEUS_BIN "
                "to a Prometheus 2.x/3.x binary instead"
            )
    cache.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prometheus-", dir=cache.root) as scratch:
        _run_logged(
            ["apt-get", "download", versions.PROMETHEUS_DEBIAN_PACKAGE],
            cache=cache,
            cwd=Path(scratch),
            env=os.environ,
        )
        packages = sorted(Path(scratch).glob(f"{versions.PROMETHEUS_DEBIAN_PACKAGE}_*.deb"))
        if not packages:
            raise DevclusterError(
                "apt-get download produced no prometheus .deb: run `apt-get update` (as root) and retry, "
                "or set PROMETHEUS_BIN",
                log=cache.build_log,
            )
        version = packages[-1].name.split("_")[1].replace(":", "%3a")
        unpacked = Path(scratch) / "root"
        _run_logged(["dpkg-deb", "-x", str(packages[-1]), str(unpacked)], cache=cache, cwd=Path(scratch), env=os.environ)
        destination = cache.prometheus_dir / version
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(destination, ignore_errors=True)
        unpacked.rename(destination)


def main() -> None:  # pragma: no cover - a convenience for `python -m modelops.devcluster.toolchain`
    from modelops.devcluster.layout import cache_root

    try:
        print(resolve(CacheLayout(cache_root())))
    except DevclusterError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":  # pragma: no cover
    main()
