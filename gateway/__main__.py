"""``python -m gateway --port 8001``: the inference gateway on its ASGI server.

Several processes (``--workers``) share budgets and rate limits only through
``HASHGRID_GATEWAY_STORE_URL`` (Redis); without it each process keeps its own, which is
right for one process only, so ``--workers`` above 1 needs the store.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server", choices=("granian", "uvicorn"), default="granian")
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="one process under cProfile (uvicorn in-process), stats written to PATH on exit",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if args.workers > 1 and not os.environ.get("HASHGRID_GATEWAY_STORE_URL"):
        parser.error("--workers above 1 needs HASHGRID_GATEWAY_STORE_URL (a shared Redis)")
    if args.profile:
        return _profiled(args.host, args.port, args.profile)
    if args.server == "uvicorn":
        import uvicorn

        uvicorn.run(
            "gateway.asgi:application",
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
        )
        return 0
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        "gateway.asgi:application",
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        loop=Loops.uvloop,
        log_access=False,
    ).serve()
    return 0


def _profiled(host: str, port: int, path: str) -> int:
    """Serve in this process under cProfile (benchmarks: where the gateway's CPU goes)."""
    import cProfile

    import uvicorn

    # uvicorn re-raises SIGTERM after its graceful shutdown: exit through ``finally``.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    profile = cProfile.Profile()
    profile.enable()
    try:
        uvicorn.run(
            "gateway.asgi:application",
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
        )
    finally:
        profile.disable()
        profile.dump_stats(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
