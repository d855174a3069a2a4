"""Finding and building binaries: stamping, Go checks, and the KUBEBUILDER_ASSETS shortcut."""

import os
import stat
from pathlib import Path

import pytest

from modelops.devcluster import toolchain, versions
from modelops.devcluster.errors import DevclusterError
from modelops.devcluster.layout import CacheLayout


def test_ldflags_stamp_both_version_packages() -> None:
    flags = toolchain.kubernetes_ldflags("v1.36.3")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.36.3" in flags
        assert f"-X {package}.gitMajor=1" in flags
        assert f"-X {package}.gitMinor=36" in flags


def test_ldflags_reject_a_version_that_is_not_a_release() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes release version"):
        toolchain.kubernetes_ldflags("1.36")


@pytest.mark.parametrize(("text", "expected"), [("go1.26.8", (1, 26)), ("go1.27rc1\n", (1, 27)), ("go1.9", (1, 9))])
def test_parse_go_version(text: str, expected: tuple[int, int]) -> None:
    assert toolchain.parse_go_version(text) == expected


def test_parse_go_version_names_what_it_could_not_read() -> None:
    with pytest.raises(DevclusterError, match="devel"):
        toolchain.parse_go_version("devel")


def _executable(path: Path, script: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_missing_go_gives_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `go` here
    with pytest.raises(DevclusterError) as error:
        toolchain.check_go()
    assert "Go is not installed" in str(error.value)
    assert "KUBEBUILDER_ASSETS" in str(error.value)
    assert "\n" not in str(error.value)


def test_too_old_go_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _executable(tmp_path / "go", "#!/bin/sh\necho go1.22.4\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DevclusterError, match=r"Go 1\.22 is too old"):
        toolchain.check_go()


def test_cold_cache_without_go_fails_before_doing_anything(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.delenv("PROMETHEUS_BIN", raising=False)
    cache = CacheLayout(tmp_path / "cache")
    progress: list[str] = []
    with pytest.raises(DevclusterError, match="Go is not installed"):
        toolchain.resolve(cache, progress=progress.append)
    # 9 steps: etcd, 4 Kubernetes commands, kwok, kwok stages, Gateway API CRDs, Prometheus.
    assert progress == [f"[build 1/9] etcd {versions.ETCD_VERSION} (go build; cold: ~2 min) ..."]
    assert not (cache.kubernetes_bin / "etcd").exists()


def _populate_data_files(cache: CacheLayout) -> None:
    (cache.kwok_stages / "fast").mkdir(parents=True)
    (cache.kwok_stages / "fast" / "kustomization.yaml").write_text("resources: []\n")
    cache.gateway_api_crds.mkdir(parents=True)
    (cache.gateway_api_crds / "gateway.networking.k8s.io_httproutes.yaml").write_text("kind: CustomResourceDefinition\n")


def test_kubebuilder_assets_and_prometheus_bin_skip_every_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    for name in ("etcd", *toolchain.KUBERNETES_COMMANDS, "kwok"):
        _executable(assets / name)
    prometheus = _executable(tmp_path / "prom" / "prometheus")
    cache = CacheLayout(tmp_path / "cache")
    _populate_data_files(cache)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    monkeypatch.setenv("PROMETHEUS_BIN", str(prometheus))
    monkeypatch.setenv("PATH", str(tmp_path / "no-go-here"))  # proves that nothing is built
    progress: list[str] = []

    binaries = toolchain.resolve(cache, progress=progress.append)

    assert progress == []
    assert binaries.kube_apiserver == (assets / "kube-apiserver").resolve()
    assert binaries.etcd == (assets / "etcd").resolve()
    assert binaries.kwok == (assets / "kwok").resolve()
    assert binaries.prometheus == prometheus.resolve()
    assert binaries.kwok_stages == cache.kwok_stages / "fast"


def test_prometheus_bin_that_is_not_executable_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMETHEUS_BIN", str(tmp_path / "missing"))
    with pytest.raises(DevclusterError, match="PROMETHEUS_BIN=.*missing is not an executable file"):
        toolchain.resolve(CacheLayout(tmp_path / "cache"), progress=lambda _: None)


def test_failed_build_command_names_the_build_log(tmp_path: Path) -> None:
    cache = CacheLayout(tmp_path / "cache")
    with pytest.raises(DevclusterError) as error:
        toolchain._run_logged(["sh", "-c", "echo compile error: boom; exit 2", "last"], cache=cache, cwd=tmp_path, env=os.environ)
    assert "exit code 2" in str(error.value)
    assert "compile error: boom" in str(error.value)
    assert error.value.log == cache.build_log
    assert "compile error: boom" in cache.build_log.read_text()
