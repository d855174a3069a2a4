"""Announcing a retraining candidate to spec.retraining.notify.url (with a timeout and retries)."""

import logging
import time
from typing import Any

import httpx

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 5.0
ATTEMPTS = 3


def post_candidate(url: str, namespace: str, name: str, run: Any, *, backoff_seconds: float = 1.0) -> bool:
    """POSTs the run and its candidate as JSON; True when the receiver answered 2xx within 3 attempts."""
    payload = {
        "modelDeployment": {"namespace": namespace, "name": name},
        "job": run.job,
        "trigger": run.trigger,
        "candidate": run.candidate.model_dump(mode="json", by_alias=True) if run.candidate else None,
    }
    for attempt in range(1, ATTEMPTS + 1):
        try:
            response = httpx.post(url, json=payload, timeout=TIMEOUT_SECONDS)
            if response.is_success:
                return True
            log.warning("notify %s: HTTP %s (attempt %d/%d)", url, response.status_code, attempt, ATTEMPTS)
        except httpx.HTTPError as error:
            log.warning("notify %s: %s (attempt %d/%d)", url, type(error).__name__, attempt, ATTEMPTS)
        if attempt < ATTEMPTS:
            time.sleep(backoff_seconds * attempt)
    return False
