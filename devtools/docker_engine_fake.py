"""A stateful fake of the Docker Engine API endpoints the agent's Docker runtime calls.

Faithful to the Engine API's documented shapes and status codes for exactly these
(with or without a ``/v1.NN`` version prefix), so ``capacity.agent.runtime.docker`` is
tested against the same answers a real daemon gives:

- ``POST /images/create?fromImage=&tag=``: 200 and a stream of JSON progress lines;
  404 ``{"message": "pull access denied for X, repository does not exist or may
  require 'docker login'"}`` for an image named by ``--missing-image``.
- ``POST /containers/create?name=``: 201 ``{"Id", "Warnings": []}``; 404 ``No such
  image`` when the image was never pulled; 409 when the name is taken; 400 for a body
  that is not a container config.
- ``POST /containers/{id}/start``: 204, 304 when already running, 404 unknown.
- ``GET /containers/{id}/json``: 200 with ``Id``, ``Name``, ``State`` (``Status``,
  ``Running``, ``ExitCode``, ``Error``, ``StartedAt``, ``FinishedAt``, ...), ``Config``,
  ``HostConfig`` and ``NetworkSettings.Ports``; 404 unknown.
- ``POST /containers/{id}/stop``: 204, 304 when not running, 404 unknown.
- ``DELETE /containers/{id}``: 204, 409 for a running container without ``force``,
  404 unknown.

Containers are found by id, id prefix or name. Tests read the whole state at
``GET /_fake/state`` and make a container exit at ``POST /_fake/exit`` (``{"id",
"exit_code", "error"}``). Run: ``python -m devtools.docker_engine_fake --port P`` (or
``--socket PATH``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

ZERO_TIME = "0001-01-01T00:00:00Z"


def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


@dataclass
class FakeEngine:
    missing_images: frozenset[str] = frozenset()
    images: set[str] = field(default_factory=set)
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Every call, as "METHOD path", for tests that check what was asked.
    calls: list[str] = field(default_factory=list)

    def find(self, ref: str) -> dict[str, Any] | None:
        for container in self.containers.values():
            if container["Id"] == ref or container["Name"] == f"/{ref}":
                return container
        matches = [c for c in self.containers.values() if c["Id"].startswith(ref)]
        return matches[0] if len(ref) >= 12 and len(matches) == 1 else None


ENGINE = web.AppKey("engine", FakeEngine)


async def pull(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    from_image = request.query.get("fromImage", "")
    tag = request.query.get("tag", "") or ("" if "@" in from_image else "latest")
    reference = f"{from_image}:{tag}" if tag else from_image
    if not from_image:
        return _error(400, "fromImage is required")
    if reference in engine.missing_images or from_image in engine.missing_images:
        return _error(
            404,
            f"pull access denied for {from_image}, repository does not exist or may "
            "require 'docker login': denied: requested access to the resource is denied",
        )
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for line in (
        {"status": f"Pulling from {from_image}", "id": tag},
        {"status": "Digest: sha256:" + "0" * 64},
        {"status": f"Status: Downloaded newer image for {reference}"},
    ):
        await response.write((json.dumps(line) + "\r\n").encode())
    engine.images.add(reference)
    await response.write_eof()
    return response


def _image_reference(image: str) -> str:
    name, _, tag = image.rpartition(":")
    return image if ("@" in image or (name and "/" not in tag)) else f"{image}:latest"


async def create(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    try:
        config = await request.json()
    except json.JSONDecodeError:
        return _error(400, "invalid JSON")
    if not isinstance(config, dict) or not isinstance(config.get("Image"), str):
        return _error(400, "config must be an object with an Image")
    name = request.query.get("name", "")
    image = _image_reference(config["Image"])
    if image not in engine.images:
        return _error(404, f"No such image: {image}")
    if name and engine.find(name) is not None:
        taken = engine.find(name)
        assert taken is not None
        return _error(
            409,
            f'Conflict. The container name "/{name}" is already in use by container '
            f'"{taken["Id"]}". You have to remove (or rename) that container to be able to '
            "reuse that name.",
        )
    container_id = secrets.token_hex(32)
    host_config = config.get("HostConfig") or {}
    engine.containers[container_id] = {
        "Id": container_id,
        "Name": f"/{name or container_id[:12]}",
        "Created": _now(),
        "Image": "sha256:" + "0" * 64,
        "Config": {
            "Image": config["Image"],
            "Env": list(config.get("Env") or []),
            "Cmd": config.get("Cmd"),
            "Labels": dict(config.get("Labels") or {}),
            "ExposedPorts": dict(config.get("ExposedPorts") or {}),
        },
        "HostConfig": {
            "PortBindings": dict(host_config.get("PortBindings") or {}),
            "DeviceRequests": list(host_config.get("DeviceRequests") or []),
            "RestartPolicy": dict(host_config.get("RestartPolicy") or {"Name": "no"}),
        },
        "State": {
            "Status": "created",
            "Running": False,
            "Paused": False,
            "Restarting": False,
            "OOMKilled": False,
            "Dead": False,
            "Pid": 0,
            "ExitCode": 0,
            "Error": "",
            "StartedAt": ZERO_TIME,
            "FinishedAt": ZERO_TIME,
        },
        "NetworkSettings": {"Ports": {}},
    }
    return web.json_response({"Id": container_id, "Warnings": []}, status=201)


def _container(request: web.Request) -> dict[str, Any] | None:
    return request.app[ENGINE].find(request.match_info["ref"])


async def start(request: web.Request) -> web.Response:
    container = _container(request)
    if container is None:
        return _error(404, f"No such container: {request.match_info['ref']}")
    state = container["State"]
    if state["Running"]:
        return web.Response(status=304)
    state.update(Status="running", Running=True, Pid=4242, ExitCode=0, Error="", StartedAt=_now())
    state["FinishedAt"] = ZERO_TIME
    container["NetworkSettings"]["Ports"] = {
        port: [{"HostIp": "0.0.0.0", "HostPort": binding["HostPort"]} for binding in bindings]  # noqa: S104
        for port, bindings in container["HostConfig"]["PortBindings"].items()
    }
    return web.Response(status=204)


def _exit(container: dict[str, Any], exit_code: int, error: str = "") -> None:
    container["State"].update(
        Status="exited", Running=False, Pid=0, ExitCode=exit_code, Error=error, FinishedAt=_now()
    )
    container["NetworkSettings"]["Ports"] = {}


async def inspect(request: web.Request) -> web.Response:
    container = _container(request)
    if container is None:
        return _error(404, f"No such container: {request.match_info['ref']}")
    return web.json_response(container)


async def stop(request: web.Request) -> web.Response:
    container = _container(request)
    if container is None:
        return _error(404, f"No such container: {request.match_info['ref']}")
    if not container["State"]["Running"]:
        return web.Response(status=304)
    _exit(container, 0)
    return web.Response(status=204)


async def remove(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    container = _container(request)
    if container is None:
        return _error(404, f"No such container: {request.match_info['ref']}")
    forced = request.query.get("force", "") in ("1", "true", "True")
    if container["State"]["Running"] and not forced:
        return _error(
            409,
            f"You cannot remove a running container {container['Id']}. Stop the container "
            "before attempting removal or force remove",
        )
    del engine.containers[container["Id"]]
    return web.Response(status=204)


async def state_view(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response(
        {
            "images": sorted(engine.images),
            "containers": sorted(engine.containers.values(), key=lambda c: c["Name"]),
            "calls": engine.calls,
        }
    )


async def exit_view(request: web.Request) -> web.Response:
    payload = await request.json()
    container = request.app[ENGINE].find(str(payload["id"]))
    if container is None:
        return _error(404, "No such container")
    _exit(container, int(payload.get("exit_code", 1)), str(payload.get("error", "")))
    return web.Response(status=204)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(*, missing_images: Sequence[str] = ()) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/_fake/"):
            request.app[ENGINE].calls.append(f"{request.method} {request.path}")
        return await handler(request)

    app = web.Application(middlewares=[record])
    app[ENGINE] = FakeEngine(missing_images=frozenset(missing_images))
    for prefix in ("", r"/{version:v[0-9]+\.[0-9]+}"):
        app.router.add_post(f"{prefix}/images/create", pull)
        app.router.add_post(f"{prefix}/containers/create", create)
        app.router.add_post(f"{prefix}/containers/{{ref}}/start", start)
        app.router.add_get(f"{prefix}/containers/{{ref}}/json", inspect)
        app.router.add_post(f"{prefix}/containers/{{ref}}/stop", stop)
        app.router.add_delete(f"{prefix}/containers/{{ref}}", remove)
    app.router.add_get("/_fake/state", state_view)
    app.router.add_post("/_fake/exit", exit_view)
    return app


async def _serve(app: web.Application, *, port: int | None, socket_path: str | None) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site: web.BaseSite
    if socket_path:
        site = web.UnixSite(runner, socket_path)
    else:
        site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"docker engine fake on {socket_path or port}", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.docker_engine_fake")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int)
    where.add_argument("--socket", help="serve on this Unix socket path instead")
    parser.add_argument("--missing-image", action="append", default=[], metavar="IMAGE")
    args = parser.parse_args(argv)
    app = create_app(missing_images=args.missing_image)
    asyncio.run(_serve(app, port=args.port, socket_path=args.socket))
    return 0


if __name__ == "__main__":
    sys.exit(main())
