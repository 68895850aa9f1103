"""The signature on a webhook call, made by the coordinator and checked by its receiver.

    X-Sparegrid-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

The secret is the account's webhook secret (`sparegrid account --webhook-secret`, hex);
the timestamp inside the MAC lets a receiver refuse a replayed old call.
"""

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Sparegrid-Signature"
DELIVERY_HEADER = "X-Sparegrid-Delivery"  # the same id on every retry of one call


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secret: bytes, header: str, body: bytes, tolerance: float = 300.0, now: float | None = None
) -> bool:
    """True when `header` signs exactly `body` with `secret`, made within `tolerance`
    seconds of `now`."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), header)
