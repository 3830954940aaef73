"""The engine's scheduling: round-robin by client (sessions and requests), stale partials
replaced, failures contained.

Jobs here are small Python functions queued on real sessions of a real (fabricated) model, so
that the order in which the worker runs them can be recorded exactly.
"""

from __future__ import annotations

import concurrent.futures
import threading

import pytest
import torch

from mooer.agent import events as ev
from mooer.agent.engine import Engine, StepRecord
from mooer.agent.session import SessionConfig
from mooer.errors import ConfigError
from mooer.llm.backend import waiting

MANUAL = SessionConfig(turn_detection=False)  # no VAD: the sessions only own jobs here


@pytest.fixture(scope="module")
def model(omni_model):
    return omni_model


@pytest.fixture
def engine(model):
    engine = Engine(model, threads=1)
    yield engine
    engine.close(timeout=10)


def _hold(engine: Engine, session) -> threading.Event:
    """Keep the worker busy until the returned event is set, so that jobs pile up."""
    release, started = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    engine.submit(session, "control", block)
    assert started.wait(10)
    return release


def _steps(log: list[str], name: str, count: int):
    for i in range(count):
        log.append(f"{name}{i}")
        yield


def test_sessions_take_turns_one_step_at_a_time(engine):
    a, b, c = (engine.open(MANUAL) for _ in range(3))
    log: list[str] = []
    release = _hold(engine, c)
    engine.submit(a, "response", _steps(log, "a", 3))
    engine.submit(a, "final", _steps(log, "A", 1))
    engine.submit(b, "response", _steps(log, "b", 2))
    release.set()
    assert engine.wait_idle(timeout=10)
    # a's jobs run in order; b is served between a's steps, not after all of them.
    assert log == ["a0", "b0", "a1", "b1", "a2", "A0"]


def test_a_final_goes_before_other_sessions_partials(engine):
    a, b, c, hold = (engine.open(MANUAL) for _ in range(4))
    log: list[str] = []
    release = _hold(engine, hold)
    engine.submit(a, "partial", lambda: log.append("a partial"))
    engine.submit(b, "partial", lambda: log.append("b partial"))
    engine.submit(c, "final", _steps(log, "c", 3))  # a final, then its reply's steps
    release.set()
    assert engine.wait_idle(timeout=10)
    # Once begun, the final's later steps take their turn in the round like any other.
    assert log == ["c0", "a partial", "b partial", "c1", "c2"]


def test_a_newer_partial_replaces_a_queued_one_and_a_final_drops_them(engine):
    a, b = engine.open(MANUAL), engine.open(MANUAL)
    log: list[str] = []
    release = _hold(engine, b)
    for i in range(3):
        engine.submit(a, "partial", lambda i=i: log.append(f"partial{i}"))
    engine.submit(a, "final", lambda: log.append("final0"))
    engine.submit(a, "partial", lambda: log.append("partial3"))
    engine.submit(a, "partial", lambda: log.append("partial4"))
    engine.submit(a, "final", lambda: log.append("final1"))
    release.set()
    assert engine.wait_idle(timeout=10)
    assert log == ["final0", "final1"]
    assert a.stats.partials_skipped == 5

    release = _hold(engine, b)
    engine.submit(a, "partial", lambda: log.append("partial5"))
    engine.submit(a, "partial", lambda: log.append("partial6"))
    engine.submit(a, "response", lambda: log.append("response"))
    release.set()
    assert engine.wait_idle(timeout=10)
    assert log[2:] == ["partial6", "response"]  # only finals make partials useless


def _request(log: list[str], name: str, count: int):
    """A request's work: ``count`` steps, then its result."""
    for i in range(count):
        if i:
            yield
        log.append(f"{name}{i}")
    return f"{name} done"


def test_a_request_takes_one_step_per_round_beside_the_sessions(engine):
    a, b, hold = engine.open(MANUAL), engine.open(MANUAL), engine.open(MANUAL)
    log: list[str] = []
    release = _hold(engine, hold)
    upload = engine.schedule(_request(log, "r", 4), label="upload")
    engine.submit(a, "response", _steps(log, "a", 3))
    engine.submit(b, "final", lambda: log.append("B0"))
    assert engine.backlog() == [hold.id, "upload1", a.id, b.id]
    release.set()
    assert upload.result(timeout=10) == "r done"
    assert engine.wait_idle(timeout=10)
    # b's final jumps the round; then the request and a's reply alternate, step by step.
    assert log == ["B0", "r0", "a0", "r1", "a1", "r2", "a2", "r3"]
    record = [r for r in engine.steps_run() if r.client != hold.id]
    assert record[:3] == [
        StepRecord(1, b.id, "final", 1, ("upload1", a.id)),
        StepRecord(2, "upload1", "request", 1, (a.id,)),
        StepRecord(3, a.id, "response", 1, ("upload1",)),
    ]
    # (a's generator ends in a step of its own after its last yield; the request's does not)
    assert [r.client for r in record[1:]] == ["upload1", a.id] * 4


def test_a_failing_request_fails_its_future_only(engine):
    a, hold = engine.open(MANUAL), engine.open(MANUAL)
    log: list[str] = []

    def broken():
        yield
        raise RuntimeError("decoder exploded")

    release = _hold(engine, hold)
    failed = engine.schedule(broken())
    engine.submit(a, "final", lambda: log.append("a"))
    release.set()
    with pytest.raises(RuntimeError, match="decoder exploded"):
        failed.result(timeout=10)
    assert engine.wait_idle(timeout=10)
    assert log == ["a"] and a.stats.errors == 0


def test_a_cancelled_request_stops_at_its_next_step(engine):
    hold = engine.open(MANUAL)
    log: list[str] = []
    release = _hold(engine, hold)
    upload = engine.schedule(_request(log, "r", 100))
    engine.submit(hold, "control", lambda: upload.cancel())  # runs between its steps
    release.set()
    assert engine.wait_idle(timeout=10)
    assert upload.cancelled() and log == ["r0"]
    with pytest.raises(concurrent.futures.CancelledError):
        upload.result(timeout=0)


def test_a_failing_job_is_reported_and_the_others_go_on(engine):
    seen: list[ev.Event] = []
    a = engine.open(MANUAL, seen.append)
    b = engine.open(MANUAL)
    log: list[str] = []
    release = _hold(engine, b)

    def broken() -> None:
        raise RuntimeError("decoder exploded")

    engine.submit(a, "final", broken)
    engine.submit(a, "final", lambda: log.append("a after"))
    engine.submit(b, "final", lambda: log.append("b"))
    release.set()
    assert engine.wait_idle(timeout=10)
    assert sorted(log) == ["a after", "b"]
    assert seen == [ev.Error("model_error", "RuntimeError: decoder exploded")]
    assert a.stats.errors == 1


def test_discard_drops_queued_work_but_not_the_running_job(engine):
    a, b = engine.open(MANUAL), engine.open(MANUAL)
    log: list[str] = []
    release = _hold(engine, a)
    engine.submit(a, "final", lambda: log.append("final"))
    engine.submit(a, "partial", lambda: log.append("partial"))
    engine.discard(a, partials_only=True)
    engine.submit(b, "final", lambda: log.append("b"))
    engine.discard(b, partials_only=False)
    release.set()
    assert engine.wait_idle(timeout=10)
    assert log == ["final"]


def test_the_worker_has_its_own_torch_threads(model):
    engine = Engine(model, threads=2)
    caller = torch.get_num_threads()
    seen: list[int] = []
    session = engine.open(MANUAL)
    engine.submit(session, "control", lambda: seen.append(torch.get_num_threads()))
    assert engine.wait_idle(timeout=10)
    assert seen == [2] and torch.get_num_threads() == caller
    engine.close()


def test_close_finishes_queued_work_then_refuses_sessions(model):
    engine = Engine(model, threads=1)
    events: list[ev.Event] = []
    session = engine.open(MANUAL, events.append)
    log: list[str] = []
    release = _hold(engine, session)
    engine.submit(session, "final", lambda: log.append("final"))
    threading.Timer(0.2, release.set).start()
    assert engine.close(timeout=10)
    assert log == ["final"]
    assert events == [ev.SessionClosed(session.id)] and session.wait_closed(0)
    assert engine.sessions == []
    with pytest.raises(ConfigError, match="closed"):
        engine.open(MANUAL)
    with pytest.raises(ConfigError, match="closed"):
        engine.schedule(_request([], "r", 1))
    with pytest.raises(ConfigError, match="threads"):
        Engine(model, threads=0)


def _waits(log: list[str], name: str, future: concurrent.futures.Future):
    log.append(f"{name} asks")
    yield future  # a batching LLM backend's decode, running elsewhere
    log.append(f"{name} got {future.result()}")


def test_a_job_waiting_for_its_future_lets_the_others_run(engine):
    a, b = engine.open(MANUAL), engine.open(MANUAL)
    log: list[str] = []
    answer: concurrent.futures.Future[str] = concurrent.futures.Future()
    engine.submit(a, "final", _waits(log, "a", answer))
    engine.submit(a, "control", lambda: log.append("a next"))  # behind the parked job
    engine.submit(b, "response", _steps(log, "b", 3))
    assert engine.wait_idle(b, timeout=10)
    assert log == ["a asks", "b0", "b1", "b2"]  # the worker did not wait for a's answer
    assert a.id not in engine.backlog()
    answer.set_result("text")
    assert engine.wait_idle(timeout=10)
    assert log[4:] == ["a got text", "a next"]


def test_discarding_a_waiting_job_frees_its_session(engine):
    a = engine.open(MANUAL)
    log: list[str] = []
    never: concurrent.futures.Future[str] = concurrent.futures.Future()
    engine.submit(a, "partial", _waits(log, "a", never))
    engine.submit(a, "control", lambda: log.append("a next"))
    engine.wait_idle(timeout=0.5)
    engine.discard(a, partials_only=True)
    assert engine.wait_idle(timeout=10)
    assert log == ["a asks", "a next"]
    never.set_result("late")  # nothing runs for it any more
    assert engine.wait_idle(timeout=10) and log == ["a asks", "a next"]


def test_a_dropped_job_cancels_the_decode_it_waits_for(engine):
    a = engine.open(MANUAL)
    asked: concurrent.futures.Future[str] = concurrent.futures.Future()
    engine.submit(a, "partial", waiting([asked]))
    assert not engine.wait_idle(timeout=0.5)  # parked on it
    engine.discard(a, partials_only=True)
    assert engine.wait_idle(timeout=10) and asked.cancelled()


def test_a_final_drops_a_waiting_partial_and_runs(engine):
    a = engine.open(MANUAL)
    log: list[str] = []
    asked: concurrent.futures.Future[str] = concurrent.futures.Future()
    engine.submit(a, "partial", _waits(log, "partial", asked))
    assert not engine.wait_idle(timeout=0.5)  # parked on it
    engine.submit(a, "final", lambda: log.append("final"))
    assert engine.wait_idle(timeout=10)
    assert log == ["partial asks", "final"]


def test_a_request_waiting_for_its_future_lets_the_others_run(engine):
    """An upload decoded on a batching backend parks as a session's job does."""
    a = engine.open(MANUAL)
    log: list[str] = []
    answer: concurrent.futures.Future[str] = concurrent.futures.Future()

    def upload():
        yield from _waits(log, "upload", answer)
        return answer.result()

    result = engine.schedule(upload(), "upload")
    engine.submit(a, "response", _steps(log, "a", 3))
    assert engine.wait_idle(a, timeout=10)
    assert log == ["upload asks", "a0", "a1", "a2"] and not result.done()
    answer.set_result("text")
    assert result.result(timeout=10) == "text" and log[-1] == "upload got text"
