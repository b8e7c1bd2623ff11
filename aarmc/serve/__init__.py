"""`aarmc serve`: the HTTP decision API over one `aarm_runtime.guard.Guard`.

    app.py       create_app(guard, ...) -> the Starlette ASGI app and its routes
    schema.py    request and response JSON Schemas; the request validator
    openapi.py   the OpenAPI 3.1 document built from those schemas (docs/openapi.json)
    metrics.py   Prometheus text metrics

Needs the `serve` extra (Starlette, uvicorn).
"""

from aarmc.serve.app import API_VERSION, create_app

__all__ = ["API_VERSION", "create_app"]
