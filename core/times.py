"""Times as the API writes them: ISO-8601 in UTC with a "Z", as DRF's DateTimeField does, also
inside JSON payloads (events, histories, a stop's conditions) that DRF does not format."""
from datetime import datetime, timezone


def iso_utc(value: datetime | None) -> str | None:
    """``2026-12-04T19:11:34.721336Z`` (an aware time, in UTC); None stays None."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
