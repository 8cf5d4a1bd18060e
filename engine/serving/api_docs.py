"""GET /docs: the API as a readable page, drawn in the browser from /openapi.json by
``static/docs.js`` (assets served by rankly itself under /dashboard/static, no CDN)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from .dashboard import asset


def page(request: Request) -> Response:
    return HTMLResponse(asset("docs.html").decode("utf-8"), headers={"cache-control": "no-store"})


ROUTES = [Route("/docs", page, methods=["GET"])]
