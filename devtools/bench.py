"""Bench-only pieces, wired in only when ``HASHGRID_BENCH_VIEWS=1`` (``BENCH_VIEWS``).

- ``ServerTimingMiddleware`` adds ``Server-Timing: app;dur=<ms>`` to every response: the
  time from the outermost middleware in to the response out, inside the gunicorn worker
  (no network, no client). ``manage.py bench_web`` reads it.
- ``trivial``: a view that does nothing, the baseline throughput of the same server
  (``/bench/trivial``, ``devtools/urls.py``).

Never on in production: settings and config/urls.py add them only under the flag.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


class ServerTimingMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed_ms = (time.perf_counter() - started) * 1000
        response["Server-Timing"] = f"app;dur={elapsed_ms:.3f}"
        return response


def trivial(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok", content_type="text/plain")
