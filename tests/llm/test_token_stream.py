"""A backend's token stream: ids read while another thread adds them, the end, failure, cancel."""

from __future__ import annotations

import threading

import pytest

from mooer.errors import LLMServerError
from mooer.llm.backend import TokenStream


def test_a_reader_waits_for_each_arrival_then_the_end():
    stream = TokenStream()
    more = stream.more(0)
    assert more is not None and not more.done()  # nothing yet
    go = threading.Event()

    def backend() -> None:
        stream.add([5, 6])
        go.wait(10)
        stream.add([7])
        stream.finish()

    threading.Thread(target=backend).start()
    assert more.result(timeout=10) is None
    assert stream.ids() == [5, 6] and stream.more(1) is None  # the 2nd is there already
    later = stream.more(2)
    assert later is not None and not stream.done.done()
    go.set()
    later.result(timeout=10)
    assert stream.done.result(timeout=10) == [5, 6, 7] and stream.ids(2) == [7]
    assert stream.arrivals == 2 and stream.more(3) is None  # ended: nothing to wait for


def test_a_failure_reaches_the_reader_and_a_cancelled_stream_takes_no_end():
    failed = TokenStream()
    waiting = failed.more(0)
    failed.finish(LLMServerError("gone"))
    assert waiting.done()
    with pytest.raises(LLMServerError, match="gone"):
        failed.done.result()
    cancelled = TokenStream()
    assert cancelled.done.cancel()
    cancelled.add([1])
    cancelled.finish()  # the backend ends late: no error
    assert cancelled.done.cancelled()
