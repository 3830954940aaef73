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


def test_a_stop_condition_ends_the_answer_with_the_ids_so_far():
    stream = TokenStream()
    stream.add([1])
    stream.stop_when(lambda: len(stream.ids()) >= 3)
    stream.add([2])
    assert not stream.done.done()
    stream.add([3, 4])  # asked at this arrival: true, the answer ends here
    assert stream.done.result(timeout=0) == [1, 2, 3, 4]
    stream.add([5])  # a backend that has not seen the stop yet: nothing changes for the reader
    stream.finish()
    assert stream.done.result() == [1, 2, 3, 4] and stream.more(4) is None
