"""The reference model server (`modelops serve`): Open Inference Protocol, digest-verified
artifacts, the metrics contract, and drift and fairness measurement in-process."""
