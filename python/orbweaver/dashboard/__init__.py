"""A web dashboard for an Orbweaver cluster: `orbweaver dashboard --storage ADDR`.

It reads everything through the storage's gRPC API with the logged-in user's credentials (the
operator token, or a resource group's id and password) and never opens the database. Needs the
``orbweaver[dashboard]`` extra (Starlette, uvicorn, Jinja2).
"""

from __future__ import annotations

__all__ = ["MISSING_EXTRA"]

MISSING_EXTRA = (
    "the dashboard needs the orbweaver[dashboard] extra: pip install 'orbweaver[dashboard]'"
)
