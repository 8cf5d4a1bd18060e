"""Serving: the Starlette app factory, its ASGI entry, middleware, rate limits, OpenAPI,
the API docs page and the dashboard (with its static assets)."""
