"""URIs as they may appear in answers and logs: scheme, host and path, never a credential.

A ``MODEL_URI`` may carry a secret in its userinfo (``https://user:token@host/...``) or in its
query string (a presigned URL's ``X-Amz-Signature=...``). The server's answers reach
unauthenticated clients (readiness is open to probes) and its log reaches whoever reads the
pod's log, so every message that names a URI shows only :func:`redact_uri` of it.

>>> redact_uri("https://user:token@models.example:8443/fraud/model.joblib?X-Amz-Signature=abc#frag")
'https://models.example:8443/fraud/model.joblib'
>>> redact_uri("file:///models/fraud/model.json")
'file:///models/fraud/model.json'
>>> scrub_uris("GET http://u:p@h/x?sig=1 failed; then https://h2/y?token=2")
'GET http://h/x failed; then https://h2/y'
"""

import re
from urllib.parse import urlsplit, urlunsplit

URI_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")


def redact_uri(uri: str) -> str:
    """``uri`` without userinfo, query string or fragment; ``<unparseable URI>`` when it does not parse."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable URI>"
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")) or "<empty URI>"


def scrub_uris(text: str) -> str:
    """``text`` with every URI in it redacted (for messages of libraries that embed the URL they fetched)."""
    return URI_PATTERN.sub(lambda match: redact_uri(match.group(0)), text)
