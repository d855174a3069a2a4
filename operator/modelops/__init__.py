"""modelops: a Kubernetes operator that ships machine-learning models to production safely."""

__version__ = "0.1.0"
