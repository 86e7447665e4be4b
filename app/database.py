"""Which database the apps use when the deployment names one: the analyst app and the worker app read it alike."""

from __future__ import annotations

from app.deployment import secret_text


def configured_database_url() -> str | None:
    """``[database] url`` from the secrets; None without a secrets file or a ``[database]`` table (the database is then
    $SLICESCOPE_DATABASE_URL or the workspace's own). An unreadable secrets file, or a ``[database]`` table without a
    url, is a one-line SliceScopeError naming the fix."""
    url = secret_text("database", "url", '"postgresql://user:password@host:5432/slicescope"')
    return url.strip() if url else None
