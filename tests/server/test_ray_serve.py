"""``mooer serve --ray`` on a local Ray cluster (2 CPUs) started here: two replicas of the
bundled demo model behind Serve's proxy, driven by real clients (openai SDK, FunASR's protocol,
HTTP). What comes back equals the offline API on the same audio. Where a session sits is read
from the replicas' own records: Serve's count of each replica's open requests (a websocket is
one) and mooer's per-replica metrics.

One cluster serves the module (starting it and two replicas takes about a minute on two busy
cores); the tests run in file order and the last ones change it (a killed replica, 2 -> 1).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from mooer.audio import SAMPLE_RATE, load_audio
from mooer.errors import ConfigError
from mooer.server.config import ServerConfig
from mooer.text import join_texts
from mooer.transcribe import transcribe
from tests.meetings.conftest import empty_store, postgres_url  # noqa: F401  (a fixture)
from tests.ports import free_port
from tests.server.wire import CHUNK, at_24k, send_realtime, send_translation

ray = pytest.importorskip("ray", reason="ray[serve] is not installed (pip install 'mooer[ray]')")

from mooer.server.commands import HubRecipe  # noqa: E402
from mooer.server.connection import CLOSE_GOING_AWAY  # noqa: E402
from mooer.server.ray_serve import (  # noqa: E402
    CLOSE_REPLICA_LOST,
    DEPLOYMENT_NAME,
    LIVE_SESSIONS,
    METRICS_PORTS,
    RayOptions,
    application,
    build_app,
    deploy,
    start_ray,
    undeploy,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audio"
FINAL = "conversation.item.input_audio_transcription.completed"
PAUSE = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
SILENCE = np.zeros(SAMPLE_RATE, dtype=np.float32)  # after speech: the VAD ends the turn
NOTHING = SILENCE[:0]  # speech cut off where it stops: its final is still to come
REPLICA_CPUS = 0.5  # two replicas and a replacement fit the 2-CPU cluster


@dataclass
class Cluster:
    url: str
    recipe: HubRecipe


@pytest.fixture(scope="module")
def demo():
    from mooer.model import load_model

    return load_model()


@pytest.fixture(scope="module")
def expected(demo) -> dict[str, str]:
    """The offline API's answers for the example recordings: what every replica must give."""
    zh, en, ast = (
        EXAMPLES / n for n in ("zh_weather.wav", "en_directions.wav", "zh_translate.wav")
    )
    texts = transcribe(demo, [zh, en])
    return {
        "zh": texts[0].text,
        "en": texts[1].text,
        "ast": transcribe(demo, [ast], task="ast")[0].translation,
    }


# Ray's fixed metrics ports, held through the module as another local cluster would hold them
RAY_METRICS_PORTS = (44217, 44227)


@pytest.fixture(scope="module")
def cluster():
    port = free_port()
    held = contextlib.ExitStack()
    for taken in RAY_METRICS_PORTS:
        with contextlib.suppress(OSError):  # already held: by another cluster, as intended
            held.enter_context(socket.create_server(("127.0.0.1", taken)))
    try:
        start_ray(RayOptions(num_cpus=2))
    except Exception as exc:  # noqa: BLE001 - whatever stops Ray here stops the module
        print(f"ray could not start: {exc!r}")
        pytest.skip(f"ray could not start a local cluster: {exc!r}")
    recipe = HubRecipe(ServerConfig(port=port, shutdown_timeout_s=20.0), threads=1)
    try:
        deploy(
            application(recipe, RayOptions(replicas=2, replica_cpus=REPLICA_CPUS)), recipe.config
        )
        yield Cluster(f"http://127.0.0.1:{port}", recipe)
    finally:
        from ray.serve.exceptions import RayServeException

        with contextlib.suppress(ValueError, RayServeException):  # the last test undeployed
            undeploy()
        ray.shutdown()
        held.close()


def _turn(wav: str, trailing: np.ndarray = SILENCE) -> bytes:
    """An example recording as a Realtime client sends it: PCM16 at 24 kHz."""
    return at_24k(np.concatenate([PAUSE, load_audio(EXAMPLES / wav), trailing]))


def _replicas() -> dict[str, object]:
    """Serve's replica actors of the deployment, by replica id."""
    from ray.util import list_named_actors

    found = {}
    for actor in list_named_actors(all_namespaces=True):
        name = actor["name"]
        if f"#{DEPLOYMENT_NAME}#" in name:
            found[name.rsplit("#", 1)[1]] = ray.get_actor(name, namespace=actor["namespace"])
    return found


def _open_requests() -> dict[str, int]:
    """Each live replica's open requests (each websocket session is one), from Serve."""
    counts = {}
    for rid, actor in _replicas().items():
        try:
            counts[rid] = ray.get(actor.get_num_ongoing_requests.remote(), timeout=10)
        except ray.exceptions.RayError:  # stopping or dead
            pass
    return counts


def _running() -> int:
    """Replicas Serve counts as running (it routes to these)."""
    from ray import serve

    app = serve.status().applications.get("mooer")
    states = app.deployments[DEPLOYMENT_NAME].replica_states if app else {}
    return sum(n for state, n in states.items() if str(state).endswith("RUNNING"))


def _metrics_by_replica(url: str, name: str) -> dict[str, float]:
    """``name{replica=...}`` summed per replica, from each replica's own /metrics (asked through
    the proxy until every live replica has answered)."""
    import httpx

    live = set(_open_requests())
    seen: dict[str, float] = {}
    for _ in range(60):
        text = httpx.get(f"{url}/metrics", timeout=30).text
        replica = re.search(r'replica="([^"]+)"', text)
        if replica is not None:
            pattern = rf'^{name}\{{[^}}]*replica="{replica.group(1)}"[^}}]*\}} (\S+)$'
            seen[replica.group(1)] = sum(float(v) for v in re.findall(pattern, text, re.M))
        if live <= seen.keys():
            break
    return seen


@dataclass
class Session:
    """A raw Realtime transcription session (the close code matters here, so no SDK)."""

    ws: object
    events: list[dict] = field(default_factory=list)
    close_code: int | None = None
    reader: asyncio.Task | None = None

    @classmethod
    async def open(cls, url: str) -> Session:
        import websockets

        ws = await websockets.connect(
            url.replace("http", "ws") + "/v1/realtime?intent=transcription"
        )
        session = cls(ws)
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))
        session.reader = asyncio.create_task(session._read())
        while not any(e["type"] == "session.updated" for e in session.events):
            await asyncio.sleep(0.05)
        return session

    async def _read(self) -> None:
        import websockets

        try:
            async for message in self.ws:
                self.events.append(json.loads(message))
        except websockets.ConnectionClosed:
            pass
        self.close_code = self.ws.close_code

    async def send(self, pcm: bytes, pace_s: float = 0.0) -> None:
        for i in range(0, len(pcm), CHUNK):
            chunk = base64.b64encode(pcm[i : i + CHUNK]).decode()
            await self.ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            await asyncio.sleep(pace_s)

    async def received(self) -> None:
        """Wait until the replica has handled everything sent so far: it answers messages in
        order, so the error event for an unknown type comes after the appends before it."""
        errors = sum(e["type"] == "error" for e in self.events)
        await self.ws.send(json.dumps({"type": "test.barrier"}))
        while sum(e["type"] == "error" for e in self.events) == errors:
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.ws.send(json.dumps({"type": "session.close"}))
        await asyncio.wait_for(self.reader, 120)

    @property
    def finals(self) -> list[str]:
        return [e["transcript"] for e in self.events if e["type"] == FINAL]


async def _spread(url: str, want: int = 2, most: int = 6) -> list[Session]:
    """Sessions opened one after another until every replica holds one (``want`` replicas)."""
    sessions = [await Session.open(url)]
    while len([n for n in _open_requests().values() if n]) < want and len(sessions) < most:
        sessions.append(await Session.open(url))
    assert len([n for n in _open_requests().values() if n]) >= want, _open_requests()
    return sessions


async def _kill_the_busiest_replica(sessions: list[Session]) -> tuple[list[Session], list[Session]]:
    """Kill the replica holding most of ``sessions``; once its clients are cut, (cut, alive)."""
    victim, count = max(_open_requests().items(), key=lambda item: item[1])
    ray.kill(_replicas()[victim], no_restart=True)
    for _ in range(200):
        if sum(s.close_code is not None for s in sessions) >= count:
            break
        await asyncio.sleep(0.1)
    return [s for s in sessions if s.close_code is not None], [
        s for s in sessions if s.close_code is None
    ]


def test_replica_options_autoscale_on_sessions_up_to_the_session_limit():
    config = ServerConfig(max_sessions=16, shutdown_timeout_s=10.0)
    fixed = RayOptions(replicas=3).deployment_options(config)
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 16  # a websocket is one ongoing request
    assert fixed["graceful_shutdown_timeout_s"] > config.shutdown_timeout_s  # drain first
    scaling = RayOptions(replicas=1, max_replicas=5).deployment_options(config)[
        "autoscaling_config"
    ]
    assert (scaling["min_replicas"], scaling["initial_replicas"], scaling["max_replicas"]) == (
        1, 1, 5,
    )  # fmt: skip
    assert scaling["policy"]["policy_kwargs"] == {"target_sessions": 8}
    capped = RayOptions(max_replicas=4, target_sessions=40).deployment_options(config)
    assert capped["autoscaling_config"]["policy"]["policy_kwargs"] == {"target_sessions": 16}
    with pytest.raises(ConfigError, match="max_replicas"):
        RayOptions(replicas=3, max_replicas=2)
    with pytest.raises(ConfigError, match="downscale_delay_s"):
        RayOptions(downscale_delay_s=-1.0)


def test_the_policy_asks_for_replicas_by_live_and_waiting_sessions():
    """The options as Serve reads them (its own config class), and the policy it builds from
    them, given Serve's context: live sessions per replica and connections queued."""
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    options = RayOptions(replicas=1, max_replicas=4, target_sessions=3)
    scaling = AutoscalingConfig(**options.deployment_options(ServerConfig())["autoscaling_config"])
    policy = _resolve_policy_callable(scaling.policy)

    def wanted(live: dict[str, float | None], queued: float, requests: float = 0.0) -> float:
        ctx = AutoscalingContext(
            deployment_id=None, deployment_name=DEPLOYMENT_NAME, app_name="mooer",
            current_num_replicas=len(live), target_num_replicas=len(live),
            running_replicas=list(live), total_num_requests=requests,
            total_queued_requests=queued,
            aggregated_metrics={LIVE_SESSIONS: {r: n for r, n in live.items() if n is not None}},
            raw_metrics=None, capacity_adjusted_min_replicas=1,
            capacity_adjusted_max_replicas=4, policy_state={}, last_scale_up_time=None,
            last_scale_down_time=None, current_time=0.0, config=scaling,
        )  # fmt: skip
        return policy(ctx)[0]

    assert wanted({"a": 3.0, "b": 3.0}, 0.0) == 2  # at the target
    assert wanted({"a": 3.0, "b": 3.0}, 3.0) == 3  # three connections wait for a place
    assert wanted({"a": 1.0, "b": 0.0}, 0.0) == pytest.approx(1 / 3)
    # HTTP requests in flight are not sessions: they ask for no replica
    assert wanted({"a": 0.0}, 0.0, requests=12.0) == 0
    # a replica without reports: Serve's ongoing requests (each websocket is one) stand in
    assert wanted({"a": 3.0, "b": None}, 0.0, requests=9.0) == 3


def test_serve_configs_are_checked_before_any_replica_starts():
    with pytest.raises(ConfigError, match="unknown setting.*max_session_count"):
        build_app({"max_sessions": 4, "max_session_count": 4})
    with pytest.raises(ConfigError, match="funasr_port.*ws://HOST:PORT/funasr"):
        build_app({"funasr_port": 10095})
    with pytest.raises(ConfigError, match="max_sessions"):
        build_app({"max_sessions": 0})


def _listening() -> list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(program, address, port) of each TCP socket that this process or one below it (the
    local cluster's) listens on; an IPv6 socket's address as IPv4 where it is one
    (``::ffff:127.0.0.1``). psutil reads them from /proc; Ray ships it."""
    import psutil

    found = []
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that ended meanwhile
            for socket_ in process.net_connections("tcp"):
                if socket_.status == psutil.CONN_LISTEN:
                    ip = ipaddress.ip_address(socket_.laddr.ip)
                    ip = getattr(ip, "ipv4_mapped", None) or ip
                    found.append((process.name(), ip, socket_.laddr.port))
    return found


def test_every_port_of_the_local_cluster_listens_on_loopback_only(cluster):
    """The GCS, the raylet, the agents, Serve's controller, proxy and replicas: all on 127.0.0.1
    (Ray's default binds most of them to every interface)."""
    listening = _listening()
    programs = {program for program, _, _ in listening}
    assert {"gcs_server", "raylet"} <= programs, listening
    assert cluster.recipe.config.port in {port for _, _, port in listening}  # Serve's proxy
    assert [(program, str(ip), port) for program, ip, port in listening if not ip.is_loopback] == []


def test_a_second_cluster_on_the_machine_serves_its_metrics_on_free_ports(cluster):
    """Ray's autoscaler and dashboard metrics ports are held (the fixture): the cluster takes
    others, and its logs carry no bind error."""
    from ray._private.worker import global_worker

    ports = {int(os.environ[name]) for name in METRICS_PORTS}
    assert len(ports) == 2 and ports.isdisjoint(RAY_METRICS_PORTS)
    deadline = time.monotonic() + 30
    while not ports <= {port for _, _, port in _listening()} and time.monotonic() < deadline:
        time.sleep(0.5)  # the dashboard's metrics server starts a little after ray.init
    assert ports <= {port for _, _, port in _listening()}
    logs = Path(global_worker.node.get_session_dir_path()) / "logs"
    for name in ("monitor.log", "dashboard.log"):
        text = (logs / name).read_text(errors="replace")
        assert "Starting" in text and "Address already in use" not in text, text[-2000:]


def test_every_protocol_through_the_proxy_gives_the_offline_results(cluster, expected):
    import httpx
    import websockets
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{cluster.url}/v1", api_key="unused")

    async def realtime() -> list[str]:
        async with client.realtime.connect(
            model="mooer", extra_query={"intent": "transcription"}
        ) as conn:
            await conn.session.update(session={"type": "transcription"})  # type: ignore[arg-type]
            await send_realtime(conn, _turn("zh_weather.wav"))
            await conn.send({"type": "session.close"})  # type: ignore[arg-type]
            return [e.transcript async for e in conn if e.type == FINAL]

    async def translation() -> str:
        async with client.realtime.translations.connect(model="mooer") as conn:
            await send_translation(conn, _turn("zh_translate.wav"))
            await conn.session.close()
            events = [e async for e in conn]
        assert events[-1].type == "session.closed"
        return "".join(e.delta for e in events if e.type == "session.output_transcript.delta")

    async def funasr() -> list[str]:
        pcm = (load_audio(EXAMPLES / "en_directions.wav") * 32767).astype("<i2").tobytes()
        url = cluster.url.replace("http", "ws") + "/funasr"
        async with websockets.connect(url, subprotocols=["binary"]) as ws:
            config = {"mode": "offline", "wav_name": "ray", "is_speaking": True, "audio_fs": 16000}
            await ws.send(json.dumps(config))
            await ws.send(pcm)
            await ws.send(json.dumps({"is_speaking": False}))
            replies = []
            while not replies or not replies[-1].get("is_final"):
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
        return [r["text"] for r in replies if r["text"]]

    async def everything():
        return await asyncio.gather(realtime(), translation(), funasr())

    finals, target, funasr_texts = asyncio.run(everything())
    assert finals == [expected["zh"]]
    assert target == expected["ast"]
    assert join_texts(funasr_texts) == expected["en"]
    with open(EXAMPLES / "en_directions.wav", "rb") as f:
        reply = httpx.post(
            f"{cluster.url}/v1/audio/transcriptions",
            files={"file": ("en_directions.wav", f)},
            data={"model": "mooer"},
            timeout=120,
        )
    assert reply.status_code == 200 and reply.json()["text"] == expected["en"]
    health = httpx.get(f"{cluster.url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["replica"] in _replicas()


def test_sessions_land_on_both_replicas_by_their_own_records(cluster, expected):
    before = _metrics_by_replica(cluster.url, "mooer_sessions_total")

    async def run() -> list[Session]:
        sessions = await _spread(cluster.url)
        pcm = _turn("zh_weather.wav")
        await asyncio.gather(*(s.send(pcm) for s in sessions))
        await asyncio.gather(*(s.close() for s in sessions))
        return sessions

    sessions = asyncio.run(run())
    assert all(s.finals == [expected["zh"]] for s in sessions)
    after = _metrics_by_replica(cluster.url, "mooer_sessions_total")
    assert len(after) == 2, after
    added = {rid: after[rid] - before.get(rid, 0.0) for rid in after}
    assert all(n >= 1 for n in added.values()), added  # each replica served one or more
    assert sum(added.values()) == len(sessions)


def test_normal_closes_leave_no_error_in_ray_logs(cluster):
    """The sessions above all ended normally (closed by the server or by the client)."""
    from ray._private.worker import global_worker

    logs = Path(global_worker.node.get_session_dir_path()) / "logs"
    lines = [
        f"{path.name}: {line}"
        for path in [*logs.glob("serve/*.log"), *logs.glob("worker-*.err")]
        for line in path.read_text(errors="replace").splitlines()
        if " ERROR " in line or "GeneratorExit" in line
    ]
    assert not lines, "\n".join(lines[:20])


def test_a_killed_replica_closes_its_sessions_with_1012_and_others_carry_on(cluster, expected):
    async def run() -> tuple[list[Session], list[Session], Session]:
        sessions = await _spread(cluster.url)
        # Speech without its ending on every session, then the replica holding most is killed.
        await asyncio.gather(*(s.send(_turn("zh_weather.wav", trailing=NOTHING)) for s in sessions))
        lost, alive = await _kill_the_busiest_replica(sessions)
        # The others finish their utterance and get its final; a lost client reconnects.
        await asyncio.gather(*(s.send(at_24k(SILENCE)) for s in alive))
        await asyncio.gather(*(s.close() for s in alive))
        again = await Session.open(cluster.url)
        await again.send(_turn("zh_weather.wav"))
        await again.close()
        return lost, alive, again

    lost, alive, again = asyncio.run(run())
    assert lost and alive
    assert {s.close_code for s in lost} == {CLOSE_REPLICA_LOST}
    assert all(s.finals == [expected["zh"]] for s in alive)
    assert all(s.events[-1]["type"] == "session.closed" for s in alive)
    assert again.finals == [expected["zh"]]


def test_scaling_down_delivers_every_final_before_the_close(cluster, expected):
    from ray import serve

    deadline = time.monotonic() + 180
    while _running() < 2 or len(_open_requests()) < 2:  # Serve replaces the killed replica
        assert time.monotonic() < deadline, "the killed replica was not replaced"
        time.sleep(1)
    one = application(cluster.recipe, RayOptions(replicas=1, replica_cpus=REPLICA_CPUS))

    async def run() -> tuple[list[Session], list[Session]]:
        sessions = await _spread(cluster.url)
        # Speech in flight: its end (and so its final) is still to come when the scale-down
        # starts; the removed replica's drain ends each utterance and sends its final first.
        await asyncio.gather(*(s.send(_turn("zh_weather.wav", trailing=NOTHING)) for s in sessions))
        await asyncio.gather(*(s.received() for s in sessions))
        await asyncio.to_thread(serve.run, one, name="mooer", route_prefix="/")
        for _ in range(300):
            if len(_open_requests()) == 1:
                break
            await asyncio.sleep(0.1)
        drained = [s for s in sessions if s.close_code is not None]
        kept = [s for s in sessions if s.close_code is None]
        await asyncio.gather(*(s.close() for s in kept))
        return drained, kept

    drained, kept = asyncio.run(run())
    assert drained and kept
    assert {s.close_code for s in drained} == {CLOSE_GOING_AWAY}
    assert [s.finals for s in drained] == [[expected["zh"]]] * len(drained)
    assert [s.finals for s in kept] == [[expected["zh"]]] * len(kept)


def test_undeploy_drains_every_session_before_serve_stops(cluster, expected):
    """What ``mooer serve --ray`` does on SIGINT/SIGTERM: the proxy outlives the drain."""

    async def run() -> list[Session]:
        sessions = [await Session.open(cluster.url) for _ in range(2)]
        await asyncio.gather(*(s.send(_turn("zh_weather.wav", trailing=NOTHING)) for s in sessions))
        await asyncio.gather(*(s.received() for s in sessions))
        await asyncio.to_thread(undeploy)
        await asyncio.wait_for(asyncio.gather(*(s.reader for s in sessions)), 60)
        return sessions

    sessions = asyncio.run(run())
    assert [s.close_code for s in sessions] == [CLOSE_GOING_AWAY] * 2
    assert [s.finals for s in sessions] == [[expected["zh"]]] * 2


def _wait(condition, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_autoscaling_follows_live_sessions_and_drains_the_replica_it_removes(cluster, expected):
    """One replica, at most two, one session each: two sessions call for a second replica;
    when one session is left, Serve removes the newer replica, whose session is drained (its
    final, then 1001) while the other replica's sessions closed normally with theirs."""
    options = RayOptions(replicas=1, max_replicas=2, target_sessions=1,
                         replica_cpus=REPLICA_CPUS, upscale_delay_s=0.0,
                         downscale_delay_s=2.0)  # fmt: skip
    from ray import serve
    from ray.serve.exceptions import RayServeException

    with contextlib.suppress(RayServeException):  # fresh replicas: they report their sessions
        serve.delete("mooer")
    deploy(application(cluster.recipe, options), cluster.recipe.config)
    assert _running() == 1

    async def run() -> tuple[list[Session], Session]:
        first = [await Session.open(cluster.url) for _ in range(2)]  # both on the one replica
        await asyncio.to_thread(
            _wait, lambda: _running() == 2 and len(_open_requests()) == 2, "no replica was added"
        )
        third = await Session.open(cluster.url)  # to the new replica: it holds none
        assert sorted(_open_requests().values()) == [1, 2], _open_requests()
        sessions = [*first, third]
        await asyncio.gather(*(s.send(_turn("zh_weather.wav", trailing=NOTHING)) for s in sessions))
        await asyncio.gather(*(s.received() for s in sessions))
        # The first two end normally; one live session is left: one replica is enough.
        await asyncio.gather(*(s.close() for s in first))
        await asyncio.wait_for(third.reader, 180)
        return first, third

    first, third = asyncio.run(run())
    assert [s.finals for s in first] == [[expected["zh"]]] * 2
    assert all(s.events[-1]["type"] == "session.closed" for s in first)
    assert third.close_code == CLOSE_GOING_AWAY and third.finals == [expected["zh"]]
    _wait(lambda: _running() == 1, "the drained replica was not removed", 60)


def test_replicas_record_into_one_postgresql_store_and_a_killed_one_loses_nothing(
    cluster, expected, request, tmp_path
):
    """``--ray --record`` with one PostgreSQL store: sessions on both replicas are kept there;
    a replica killed after its sessions' first finals leaves those finals in the store, and the
    other replica's sessions go on recording."""
    with empty_store("postgresql", tmp_path, request) as url:
        _record_on_two_replicas_and_kill_one(cluster, url)


def _record_on_two_replicas_and_kill_one(cluster: Cluster, url: str) -> None:
    from dataclasses import replace

    from mooer.meetings.store import MeetingStore

    config = replace(cluster.recipe.config, record=True, meetings_db=url)
    recipe = replace(cluster.recipe, config=config)
    deploy(application(recipe, RayOptions(replicas=2, replica_cpus=REPLICA_CPUS)), config)

    async def run() -> tuple[list[Session], list[Session]]:
        sessions = await _spread(cluster.url)
        await asyncio.gather(*(s.send(_turn("zh_weather.wav")) for s in sessions))
        while not all(s.finals for s in sessions):
            await asyncio.sleep(0.1)
        lost, alive = await _kill_the_busiest_replica(sessions)
        await asyncio.gather(*(s.send(_turn("zh_weather.wav")) for s in alive))
        await asyncio.gather(*(s.close() for s in alive))
        return lost, alive

    lost, alive = asyncio.run(run())
    assert lost and alive and {s.close_code for s in lost} == {CLOSE_REPLICA_LOST}
    store = MeetingStore(url)
    try:
        for s, finals in [*((s, 1) for s in lost), *((s, 2) for s in alive)]:
            meeting_id = s.events[0]["session"]["mooer"]["meeting_id"]
            heard = [(e["item_id"], e["transcript"]) for e in s.events if e["type"] == FINAL]
            kept = [(g.item_id, g.transcript) for g in store.get(meeting_id).segments]
            assert len(heard) == finals and kept == heard, (meeting_id, heard, kept)
            assert store.get(meeting_id).info.in_progress == (s in lost)
        assert {m.id for m in store.list()} == {
            s.events[0]["session"]["mooer"]["meeting_id"] for s in [*lost, *alive]
        }
    finally:
        store.close()
