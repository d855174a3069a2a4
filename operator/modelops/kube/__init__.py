"""Adapters to the Kubernetes API: the only code in modelops that talks to the apiserver."""
