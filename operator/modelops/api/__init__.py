"""API models (pydantic): the single source of truth for the CRD schema. No I/O here."""
