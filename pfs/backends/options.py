"""How to reach a backend (endpoint, region, credentials, deadline), and how to print a URI safely.

This module must never log or format a secret: `BackendOptions` hides its keys from `repr`, and
`redact_uri` is the one way a URI given by a user reaches a log line or an error message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

# Query parameters whose values are credentials. Any parameter whose name merely looks secret is redacted
# too (see `_looks_secret`), so a misspelled `secret_keys=` never leaks either.
SECRET_PARAMS = frozenset({"access_key", "secret_key", "session_token", "password", "token"})
_SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "access_key", "accesskey")
REDACTED = "***"


@dataclass
class BackendOptions:
    """Options that override what a URI says (options win over query parameters).

    Every field is JSON-serialisable: the mount daemon receives them as a dict.
    """

    endpoint: str | None = None  # "host:port" or "http(s)://host:port"
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    anonymous: bool = False
    # Deadline in seconds for one call into the store, retries included; a server that is down or hung
    # makes that call fail with `Transient` after at most this long (see pfs.backends.arrow.connect).
    timeout: float = 30.0
    credentials_file: str | None = None  # an AWS shared-credentials ini file
    profile: str | None = None  # its section; "default" when unset


def _looks_secret(name: str) -> bool:
    lowered = unquote(name).lower()
    return lowered in SECRET_PARAMS or any(word in lowered for word in _SECRET_WORDS)


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        name, has_value, _ = item.partition("=")
        parts.append(f"{name}={REDACTED}" if has_value and _looks_secret(name) else item)
    return "&".join(parts)


def redact_uri(uri: str) -> str:
    """`uri` with credentials replaced by `***`: secret query values and any `user:password@` part.

    Everything else is kept character for character, so the result still tells which bucket and endpoint
    were meant. Never raises, whatever the text.
    """
    head, question, rest = uri.partition("?")
    query, hash_mark, fragment = rest.partition("#")
    scheme_sep = head.find("://")
    if scheme_sep >= 0:
        authority_start = scheme_sep + 3
        slash = head.find("/", authority_start)
        authority_end = len(head) if slash < 0 else slash
        authority = head[authority_start:authority_end]
        if "@" in authority:
            authority = f"{REDACTED}@{authority.rpartition('@')[2]}"
            head = head[:authority_start] + authority + head[authority_end:]
    return head + question + _redact_query(query) + hash_mark + fragment
