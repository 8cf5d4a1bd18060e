"""Admin authentication: a bearer token or API key from settings, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from ..config import Settings
from .validation import RequestError

DISABLED = ("admin routes are disabled: no admin token is configured (set admin_token or "
            "RANKLY_ADMIN_TOKEN)")


def require_admin(request: Request, settings: Settings) -> None:
    """Raise a 401 (no credentials) or 403 (wrong ones); with no token configured, every
    admin request gets the same 403 saying admin routes are disabled, credentials or not
    (a 401 asked for credentials none could satisfy, #18).

    Accepts ``Authorization: Bearer <token>`` or ``X-API-Key: <token>``. The token is never
    echoed back or logged.
    """
    token = settings.admin_token
    if token is None:
        raise RequestError("authorization", DISABLED, status=403)
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else None
    if given is None:
        given = request.headers.get("x-api-key")
    if not given:
        raise RequestError("authorization", "admin credentials required", status=401)
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               token.reveal().encode("utf-8", "surrogatepass")):
        raise RequestError("authorization", "invalid admin credentials", status=403)
