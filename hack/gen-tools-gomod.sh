#!/usr/bin/env bash
# Regenerates hack/tools/go.mod + go.sum: the pinned Go module that builds the
# devcluster's control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd). The staging replace list is derived from the
# k8s.io/kubernetes tag's own go.mod (kubernetes/kubernetes#79384), never typed.
set -euo pipefail
K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.8}"   # the etcd k8s.io/kubernetes@${K8S_VERSION} itself pins
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
cd "$(dirname "$0")/tools"
rm -f go.mod go.sum
go mod init modelops.dev/hack/tools >/dev/null 2>&1
go mod edit -go=1.26.0 -godebug=default=go1.26
gomod="$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
grep -E '=> \./staging/src/k8s\.io/' "$gomod" | awk '{print $1}' | sort -u | while read -r mod; do
  go mod edit -replace="${mod}=${mod}@${STAGING_VERSION}"
done
go get "k8s.io/kubernetes@${K8S_VERSION}"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  go get -tool "k8s.io/kubernetes/cmd/${cmd}@${K8S_VERSION}"
done
go get -tool "go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
go mod tidy
echo "hack/tools: $(grep -c '=> k8s.io/' go.mod) staging replaces at ${STAGING_VERSION}"
