"""The inference gateway: buyers' OpenAI-compatible requests, relayed to partner nodes.

Its own ASGI process (``python -m gateway --port 8001``), described in docs/gateway.md.
The request path (``gateway.app``) makes no database query: ``gateway.catalog`` keeps
keys, lines and routes in memory and reloads them when they change, ``gateway.budget``
keeps limits and spend in a store every gateway process shares, ``gateway.request_log``
writes the request log in batches off the hot path.
"""
