"""A real local Kubernetes control plane plus Prometheus, built from pinned sources.

The devcluster runs etcd, kube-apiserver (RBAC on), kube-controller-manager,
kube-scheduler, kwok (fake nodes that make pods Ready and Job pods complete) and
Prometheus as plain processes bound to 127.0.0.1. Nothing is mocked: every
later test of the operator runs against it. See ``docs/devcluster.md``.

Modules:

- ``versions``: the pinned versions, in one place.
- ``layout``: where the state directory and the binary cache keep their files.
- ``toolchain``: finds or builds the binaries (Go, apt), with progress lines.
- ``pki`` / ``kubeconfigs``: certificates and kubeconfig files.
- ``components``: the command line of each component (pure functions).
- ``processes``: spawning, liveness and stopping by PID.
- ``cluster``: ``up``/``down``/``status`` orchestration.
- ``bootstrap``: fake nodes and Gateway API CRDs once the API answers.
- ``targets``: registering local scrape targets with Prometheus (file_sd).
"""
