"""``mooer serve --ray``: the same ASGI app served by replicas behind Ray Serve's proxy.

Each replica is a Ray actor that loads the model, builds its own hub and serves
``create_app(hub)``: every protocol on one port (FunASR at ``/funasr``), the page, HTTP. A
websocket is one long request to Serve, so it stays on the replica that accepted it, and it
counts as one ongoing request: ``max_ongoing_requests`` (the server's session limit) is each
replica's ceiling. Autoscaling counts live sessions, not requests: each replica reports its hub's
live sessions (``record_autoscaling_stats``) and ``SessionsPolicy`` asks for enough replicas to
hold them, and the connections Serve holds back because every replica is full, at the target.

Draining: Serve waits for a removed replica's open requests before it calls the destructor,
so mooer's drain (finals, then a clean close) cannot wait for the destructor. Ray 2.60 gives
the user code no earlier hook, so each replica wraps its own process's
``Replica.perform_graceful_shutdown`` (ray is pinned to 2.60.0 for this) to start the hub's
drain on the replica's loop the moment Serve begins to stop it (scale-down, rolling update,
``serve.shutdown()``); Serve then waits for the websockets that the drain closes.

A replica that dies (killed, out of memory, its node lost) cannot close its websockets: Serve's
proxy would drop them without a close frame (1006). ``LostReplicaClose``, installed in the
proxy by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, closes them with 1012 (service restart)
instead, which tells a client to reconnect: the proxy routes it to a live replica.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from mooer.errors import ConfigError, check_number
from mooer.server.config import ServerConfig

if TYPE_CHECKING:
    from mooer.server.commands import HubRecipe

log = logging.getLogger("mooer.server")

APP_NAME = "mooer"
DEPLOYMENT_NAME = "MooerReplica"
# Serve's own wait between checks of a stopping replica's open requests (its default: 2 s).
DRAIN_POLL_S = 0.2
# Beyond the drain's own timeout, what Serve waits before it kills a stopping replica.
KILL_MARGIN_S = 10.0
# The custom autoscaling metric each replica reports: its hub's live websocket sessions.
LIVE_SESSIONS = "live_sessions"
# RFC 6455 "service restart": the replica serving this session is gone; reconnect.
CLOSE_REPLICA_LOST = 1012
REPLICA_LOST = "the replica serving this session stopped; reconnect"
PROXY_CALLBACK = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_MIDDLEWARES = "mooer.server.ray_serve:proxy_middlewares"
# "0": Ray's single-machine mode, its ports on loopback; "1": other machines may join.
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray's autoscaler and dashboard serve their metrics on fixed ports (44217, 44227 in Ray 2.60):
# a second local cluster on the machine cannot bind them and logs an error for each
METRICS_PORTS = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")


# How often each replica reports its live sessions to Serve's controller, and the window Serve
# averages them over (Serve's defaults, 10 s and 30 s, are for short requests).
METRICS_INTERVAL_S = 2.0
LOOK_BACK_S = 10.0


@dataclass(frozen=True)
class RayOptions:
    """How many replicas, and where Ray runs.

    ``max_replicas`` > ``replicas``: Serve autoscales between the two on live sessions
    (``SessionsPolicy``), aiming at ``target_sessions`` per replica (default: half the server's
    session limit), after the count has called for a change for ``upscale_delay_s`` /
    ``downscale_delay_s`` (Serve's own defaults). ``address``: an existing Ray cluster (``auto``,
    ``ray://HOST:10001``); None starts a local one with ``num_cpus`` CPUs (None: all) and no
    dashboard.
    """

    replicas: int = 2
    max_replicas: int | None = None
    target_sessions: int | None = None
    address: str | None = None
    num_cpus: int | None = None
    replica_cpus: float = 1.0  # Ray CPUs reserved by each replica
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0

    def __post_init__(self) -> None:
        check_number(self.replicas, "RayOptions.replicas", 1, integer=True)
        if self.max_replicas is not None:
            check_number(self.max_replicas, "RayOptions.max_replicas", self.replicas, integer=True)
        if self.target_sessions is not None:
            check_number(self.target_sessions, "RayOptions.target_sessions", 1, integer=True)
        if self.num_cpus is not None:
            check_number(self.num_cpus, "RayOptions.num_cpus", 1, integer=True)
        check_number(self.replica_cpus, "RayOptions.replica_cpus", 0.0, integer=False)
        check_number(self.upscale_delay_s, "RayOptions.upscale_delay_s", 0.0, integer=False)
        check_number(self.downscale_delay_s, "RayOptions.downscale_delay_s", 0.0, integer=False)

    def deployment_options(self, config: ServerConfig) -> dict[str, Any]:
        """Serve's ``@serve.deployment`` options for servers of ``config``."""
        options: dict[str, Any] = {
            "name": DEPLOYMENT_NAME,
            "max_ongoing_requests": config.max_sessions,  # websockets and HTTP requests
            "ray_actor_options": {"num_cpus": self.replica_cpus},
            "graceful_shutdown_wait_loop_s": DRAIN_POLL_S,
            "graceful_shutdown_timeout_s": config.shutdown_timeout_s + KILL_MARGIN_S,
            "health_check_period_s": 2.0,
        }
        if self.max_replicas is None or self.max_replicas == self.replicas:
            options["num_replicas"] = self.replicas
        else:
            target = min(self.target_sessions or max(1, config.max_sessions // 2),
                         config.max_sessions)  # fmt: skip
            options["autoscaling_config"] = {
                "min_replicas": self.replicas,
                "initial_replicas": self.replicas,
                "max_replicas": self.max_replicas,
                "metrics_interval_s": METRICS_INTERVAL_S,
                "look_back_period_s": LOOK_BACK_S,
                "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s,
                "policy": {
                    "policy_function": f"{__name__}:SessionsPolicy",
                    "policy_kwargs": {"target_sessions": target},
                },
            }
        return options


class SessionsPolicy:
    """Serve's autoscaling policy for mooer, run in Serve's controller: enough replicas for the
    live sessions the replicas report, plus the connections Serve holds back because every
    replica is at its limit, at ``target_sessions`` each. Serve then applies the replica bounds
    and the delays. HTTP requests and scrapes do not count: an upload is over in seconds, a
    session holds its replica for as long as it lasts.

    A replica that reports no sessions (one started before autoscaling was configured: Serve
    starts a replica's reports at its start only, or one just started) leaves the count to
    Serve's ongoing requests, where each websocket is one too."""

    def __init__(self, target_sessions: int) -> None:
        self.target_sessions = target_sessions

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        """``ctx``: Serve's ``AutoscalingContext``; returns (replicas wanted, policy state)."""
        live = (ctx.aggregated_metrics or {}).get(LIVE_SESSIONS, {})
        if set(ctx.running_replicas) <= live.keys():
            sessions = sum(live.values()) + (ctx.total_queued_requests or 0.0)
        else:
            sessions = ctx.total_num_requests
        return sessions / self.target_sessions, {}


class MooerReplica:
    """One replica: its own model, engine and hub; serves ``create_app(hub)``."""

    def __init__(self, recipe: HubRecipe) -> None:
        from ray import serve

        self.replica_id = serve.get_replica_context().replica_tag
        self.hub = recipe.build(replica=self.replica_id)
        self._loop = asyncio.get_running_loop()  # the loop Serve runs this replica's app on
        self._drain: concurrent.futures.Future | None = None
        _before_graceful_shutdown(self.start_drain)
        _grpc_on_loopback_with_the_node()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What ``SessionsPolicy`` scales on (Serve asks every ``METRICS_INTERVAL_S``)."""
        return {LIVE_SESSIONS: len(self.hub.connections)}

    def __serve_build_asgi_app__(self):
        from mooer.server.app import create_app

        return create_app(self.hub)

    def start_drain(self) -> None:
        """Refuse new sessions, finish the live ones (finals, close 1001); from any thread."""
        if self._drain is None:
            log.info("replica %s: draining", self.replica_id)
            self._drain = asyncio.run_coroutine_threadsafe(self.hub.drain(), self._loop)

    async def __del__(self) -> None:
        self.start_drain()  # already done, unless Serve skipped its graceful path
        await asyncio.wrap_future(self._drain)
        await asyncio.to_thread(self.hub.close)
        self.hub.model.llm_backend.close()
        await super().__del__()  # the ASGI wrapper's lifespan shutdown


def _before_graceful_shutdown(hook: Callable[[], None]) -> None:
    """Run ``hook`` when Serve starts stopping this process's replica (see the module doc)."""
    from ray.serve._private import replica as serve_replica

    cls = serve_replica.Replica
    original = cls.perform_graceful_shutdown

    async def perform_graceful_shutdown(self: Any) -> None:
        hook()
        await original(self)

    cls.perform_graceful_shutdown = perform_graceful_shutdown


def _grpc_on_loopback_with_the_node() -> None:
    """This process's replica: its gRPC server on 127.0.0.1 where the node's address is a
    loopback one (``_keep_on_loopback``), as Ray binds its own servers.

    Serve 2.60 binds each replica's server for calls between deployments to every interface
    (``[::]:0`` in ``Replica._on_initialized``), whatever the node's address; mooer's replicas
    take no such calls (the proxy calls them as actors), and on a multi-machine cluster the
    node's address is not loopback, so nothing changes there."""
    import ray
    from ray._common.network_utils import build_address, get_localhost_ip, is_localhost
    from ray.serve._private import replica as serve_replica

    if not is_localhost(ray.util.get_node_ip_address()):
        return
    add_port = serve_replica.add_port_to_grpc_server
    loopback = build_address(get_localhost_ip(), 0)

    def add_port_on_loopback(server: Any, address: str) -> int:
        return add_port(server, loopback if address == "[::]:0" else address)

    serve_replica.add_port_to_grpc_server = add_port_on_loopback


class LostReplicaClose:
    """ASGI middleware for Serve's proxy, around each websocket:

    - one whose replica ended it without a close (the replica died) gets
      ``CLOSE_REPLICA_LOST`` rather than a dropped connection;
    - what the replica sends after the client has gone (its own close, answering the
      client's) is dropped here: Serve's proxy would log the failed send as an ERROR with
      "async generator ignored GeneratorExit" for every websocket a client closes.
    """

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        seen: set[str] = set()  # websocket.accept / websocket.close / websocket.disconnect

        async def watched_send(message: dict) -> None:
            if {"websocket.close", "websocket.disconnect"} & seen:
                return  # the connection is over: nobody to send to
            try:
                await send(message)
            except OSError:  # the client went away meanwhile (uvicorn's ClientDisconnected)
                seen.add("websocket.disconnect")
                return
            seen.add(message["type"])

        async def watched_receive() -> dict:
            message = await receive()
            seen.add(message["type"])
            return message

        try:
            await self.app(scope, watched_receive, watched_send)
        finally:
            if (
                "websocket.accept" in seen
                and not {"websocket.close", "websocket.disconnect"} & seen
            ):
                log.warning("a websocket's replica stopped without closing it: closing with %d",
                            CLOSE_REPLICA_LOST)  # fmt: skip
                message = {"type": "websocket.close", "code": CLOSE_REPLICA_LOST}
                with contextlib.suppress(Exception):  # the client may be gone too
                    await send({**message, "reason": REPLICA_LOST})


def proxy_middlewares() -> list:
    """What ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names: the proxy's middlewares."""
    from starlette.middleware import Middleware

    return [Middleware(LostReplicaClose)]


def _serve():
    """Ray Serve's API, or a ``ConfigError`` saying how to install it."""
    try:
        from ray import serve
    except ImportError as exc:
        raise ConfigError(
            f"--ray needs Ray Serve ({exc}): pip install 'mooer[ray]' (ray[serve]==2.60.0)"
        ) from exc
    return serve


def application(recipe: HubRecipe, options: RayOptions):
    """The Serve application: ``options`` replicas of ``MooerReplica`` built from ``recipe``."""
    serve = _serve()

    if recipe.config.funasr_port is not None:
        raise ConfigError(
            "ServerConfig.funasr_port: a second port cannot sit behind Ray Serve's proxy; "
            "FunASR clients connect to ws://HOST:PORT/funasr instead"
        )
    deployment = serve.deployment(**options.deployment_options(recipe.config))
    # Without a code version of its own, every ``serve.run`` would replace all replicas (Serve
    # draws a random one); with it, a change of replica count alone scales in place.
    version = _code_version(recipe)
    ingress = deployment(serve.ingress()(MooerReplica)).options(version=version, _internal=True)
    return ingress.bind(recipe)


def _code_version(recipe: HubRecipe) -> str:
    """Same recipe and mooer release: same replicas (``serve run`` configs version themselves)."""
    import hashlib

    from mooer import __version__

    return hashlib.sha256(f"{__version__} {recipe!r}".encode()).hexdigest()[:16]


def build_app(args: Mapping[str, Any]):
    """``serve run``'s builder (``import_path: mooer.server.ray_serve:build_app``): ``args``
    holds ``mooer serve``'s settings by their ``ServerConfig``/``HubRecipe``/``RayOptions`` field
    names (``max_sessions``, ``model``, ``replicas``...); unknown names are refused."""
    from mooer.server.commands import HubRecipe

    args = dict(args)
    server = _take(args, ServerConfig, skip={"host", "port"})
    recipe = _take(args, HubRecipe, skip={"config"})
    ray = _take(args, RayOptions, skip={"address", "num_cpus"})
    if args:
        raise ConfigError(f"serve config args: unknown setting(s) {', '.join(sorted(args))}")
    return application(HubRecipe(ServerConfig(**server), **recipe), RayOptions(**ray))


def _take(args: dict[str, Any], cls: type, skip: set[str]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)} - skip
    taken = {name: args.pop(name) for name in list(args) if name in names}
    if cls is ServerConfig and "allowed_origins" in taken:
        taken["allowed_origins"] = tuple(taken["allowed_origins"])
    return taken


def start_ray(options: RayOptions) -> None:
    """Connect to ``options.address``, or start a local cluster with its ports on loopback."""
    import ray

    if options.address is not None:
        ray.init(address=options.address, log_to_driver=True)
        return
    os.environ.setdefault(PROXY_CALLBACK, PROXY_MIDDLEWARES)  # inherited by the cluster's proxy
    _keep_on_loopback()
    for name in METRICS_PORTS:  # free ones instead, unless the environment names them
        os.environ.setdefault(name, str(_free_port()))
    ray.init(num_cpus=options.num_cpus, include_dashboard=False, log_to_driver=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keep_on_loopback() -> None:
    """Every port of the local cluster on 127.0.0.1, unless ``SINGLE_MACHINE`` is set already.

    Ray 2.60 binds its servers (GCS, raylet, workers, agents) to loopback only when the node's
    address is a loopback one, and to every interface otherwise; and it turns 127.0.0.1 into the
    machine's address unless its single-machine mode (the default on macOS and Windows) is on.
    The cluster's processes read the variable; this process read it when ``ray`` was imported."""
    from ray._private import ray_constants

    os.environ.setdefault(SINGLE_MACHINE, "0")
    ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(SINGLE_MACHINE, True)


def deploy(app: Any, config: ServerConfig, log_level: str = "info") -> None:
    """Start Serve's proxy on ``config``'s host and port (once per cluster) and run ``app``
    there as the application ``mooer``; returns when its replicas are up. Run again with other
    options, it updates the running replicas (a scale-down drains the ones removed)."""
    from ray import serve

    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": config.host, "port": config.port},
        logging_config={"log_level": log_level.upper()},
    )
    serve.run(app, name=APP_NAME, route_prefix="/")


def serve_on_ray(recipe: HubRecipe, options: RayOptions, log_level: str = "info") -> int:
    """``mooer serve --ray``: run the replicas until SIGINT/SIGTERM, then drain them all."""
    app = application(recipe, options)  # refuses what cannot work (no Ray) before Ray starts
    import ray

    store = recipe.open_store()  # a store that cannot be opened fails here, not in each replica
    if store is not None:
        store.close()
    stop = threading.Event()
    start_ray(options)
    # After ``ray.init``: it installs a SIGTERM handler that exits at once, and its core
    # worker's crash handler aborts the process on SIGTERM; neither would drain anything.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        cfg = recipe.config
        deploy(app, cfg, log_level)
        where = f"{cfg.host}:{cfg.port}"
        print(
            f"mooer: serving http://{where}/ from {options.replicas} Ray Serve replica(s) "
            f"(realtime ws://{where}/v1/realtime, FunASR ws://{where}/funasr)",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
        print("mooer: draining the replicas", file=sys.stderr, flush=True)
        undeploy()
    finally:
        ray.shutdown()
    return 0


def undeploy() -> None:
    """Drain every replica (finals, close 1001), then stop Serve. The application goes first:
    ``serve.shutdown()`` alone stops the proxy while the replicas still send their finals."""
    from ray import serve

    serve.delete(APP_NAME)  # returns once every replica has drained and gone
    serve.shutdown()
