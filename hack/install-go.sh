#!/usr/bin/env bash
# Makes sure a Go >= 1.26 toolchain is on PATH; prints the directory to add to PATH.
# Without one, downloads the official toolchain module golang.org/toolchain through the
# Go module proxy (the same artifact GOTOOLCHAIN=auto would fetch) into the modelops cache.
set -euo pipefail
GO_VERSION="${GO_VERSION:-1.26.8}"
MIN_MINOR=26
if command -v go >/dev/null 2>&1; then
  have="$(go env GOVERSION 2>/dev/null || true)"
  minor="$(sed -nE 's/^go1\.([0-9]+).*/\1/p' <<<"$have")"
  if [[ -n "$minor" && "$minor" -ge "$MIN_MINOR" ]]; then
    dirname "$(command -v go)"
    exit 0
  fi
  echo "install-go: found $have, need go1.${MIN_MINOR}+; fetching go${GO_VERSION}" >&2
fi
arch="$(uname -m)"; case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
cache="${MODELOPS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/modelops}/go-${GO_VERSION}"
if [[ ! -x "$cache/bin/go" ]]; then
  proxy="${GOPROXY:-https://proxy.golang.org}"; proxy="${proxy%%,*}"
  [[ "$proxy" == direct || "$proxy" == off ]] && proxy=https://proxy.golang.org
  module="v0.0.1-go${GO_VERSION}.linux-${arch}"
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  echo "install-go: downloading ${proxy}/golang.org/toolchain/@v/${module}.zip" >&2
  curl -fsSL --retry 3 --max-time 600 -o "$tmp/go.zip" "${proxy}/golang.org/toolchain/@v/${module}.zip"
  python3 - "$tmp/go.zip" "$tmp/x" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as archive:
    for info in archive.infolist():
        path = archive.extract(info, sys.argv[2])
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(path, mode)
PY
  mkdir -p "$(dirname "$cache")"
  rm -rf "$cache"
  mv "$tmp/x/golang.org/toolchain@${module}" "$cache"
fi
echo "$cache/bin"
