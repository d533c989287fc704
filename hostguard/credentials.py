"""The one way a URI or URL is shown: its password masked. Every store, lock or API address that fedrisk prints,
logs, tags, stores or publishes goes through `masked` (a PostgreSQL tracking URI or lock URL may carry one)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def masked(url: str) -> str:
    """`url` with the password of its user part replaced by ***; unchanged when it has none."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL: shown as it is, unless it looks like it carries credentials
        return url if "@" not in url else "(an address with credentials, not shown)"
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
