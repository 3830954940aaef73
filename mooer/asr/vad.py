"""Voice activity detection for live sessions and offline files, on silero-vad's network.

One ``VadModel`` (the weights) is loaded once per process and shared; every session owns a
``StreamingVad`` whose ``VadState`` holds that stream's recurrent state, context samples and audio.
The detector turns 16 kHz samples, fed in chunks of any size, into ``SpeechStarted`` and
``SpeechEnded`` events whose sample offsets count from the start of the stream.
"""

from __future__ import annotations

import enum
import functools
import importlib.util
import math
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from mooer.audio import SAMPLE_RATE, ms_to_samples
from mooer.errors import AudioError, CheckpointError, ConfigError, check_number

WINDOW = 512  # samples the network scores at once: 32 ms at 16 kHz
CONTEXT = 64  # samples of the previous window prepended to each window: 4 ms
STATE_SHAPE = (2, 1, 128)  # LSTM (h, c) x batch x hidden
PAUSE_DB = 35.0  # a window this far below the segment's loudest one is a pause, whatever p says
QUIET = 10 ** (-PAUSE_DB / 20)  # the level of such a window over the loudest one's
BLOCK = 128  # samples whose level finds a short pause to cut at: 8 ms, a quarter of a window


@dataclass(frozen=True)
class VadConfig:
    """Thresholds on silero's speech probability and the timing rules of a turn.

    A window opens speech at ``threshold`` and counts as silence only below ``off_threshold``
    (``negative_threshold``, or ``threshold - 0.15`` when unset); the gap between the two keeps
    a wavering probability from flapping. Override with ``dataclasses.replace``.

    The endpoint wait shrinks as the utterance grows, so continuous speech is cut into sentences:
    ``min_silence_ms`` of silence ends a turn that has just begun, and the wait falls linearly
    to ``short_silence_ms`` over the first ``shrink_s`` seconds of the segment (``None``: it
    stays ``min_silence_ms``). A pause counts from the first window the network scores below
    ``off_threshold`` or that is ``PAUSE_DB`` quieter than the segment's loudest window (the
    network's probability lags the end of speech by a window or two). So with the defaults a
    1.5 s sentence is ended by a 100 ms pause (three silent 32 ms windows), while a 0.5 s "hello"
    still waits 370 ms and a stop closure (one or two windows) does not end it. (Live chat
    sessions set ``shrink_s=None``: a turn there is a whole question.) With ``quiet_pauses``
    only ``PAUSE_DB`` quiet windows make such a pause: silero scores some unvoiced sounds (the
    s of "sixteen") below ``off_threshold`` for up to 190 ms, 17-28 dB below the loudest window,
    and those are inside a word. Offline files take it; live sessions do not, so that speech
    over noise, where no window is that quiet, still gets a wait that shrinks.

    A segment starts ``speech_pad_ms`` before the first window the network scored as speech
    (it hears a soft onset late), no earlier than the last segment's end; ``quiet_lead_ms``
    keeps of that no more than so much silence before the first sound (a model may read a
    sentence after half a second of silence as another one).

    Speech whose pauses are all shorter than that wait (a fast speaker) is cut once the segment
    is ``pause_cut_s`` long, at the best pause it has held so far: the longest run of at least
    ``min_pause_ms`` of pause windows (the quietest of equal ones), in its middle. A pause lies
    between words, so no word is split. ``None`` (or ``shrink_s=None``): only ``max_segment_s``
    cuts such speech.
    """

    threshold: float = 0.5
    negative_threshold: float | None = None
    min_speech_ms: int = 250  # speech shorter than this is a click, not a turn
    min_silence_ms: int = 500  # this much silence ends the turn (the longest endpoint wait)
    short_silence_ms: int = 96  # the wait once the segment is shrink_s long (3 windows)
    shrink_s: float | None = 1.5  # segment length over which the wait shrinks; None: it does not
    speech_pad_ms: int = 100  # kept either side of the speech in a segment's audio
    quiet_lead_ms: int | None = None  # of that pad, at most this much quiet before the first sound
    pause_cut_s: float | None = 3.0  # a segment this long is cut at its best pause so far
    min_pause_ms: int = 48  # the shortest pause such a cut may take
    quiet_pauses: bool = False  # only PAUSE_DB quiet windows (not unvoiced ones) end a turn early
    max_segment_s: float = 20.0  # longer speech is cut at its quietest point
    cut_search_s: float = 3.0  # how far back from max_segment_s that point is looked for

    def __post_init__(self) -> None:
        check_number(self.threshold, "VadConfig.threshold", above=0, below=1)
        if self.negative_threshold is not None:
            check_number(self.negative_threshold, "VadConfig.negative_threshold", above=0)
        off = self.off_threshold
        _require(
            "negative_threshold",
            off,
            0 < off < self.threshold,
            f"in (0, threshold={self.threshold}); unset it means threshold - 0.15",
        )
        for name in ("min_speech_ms", "short_silence_ms", "speech_pad_ms", "min_pause_ms"):
            check_number(getattr(self, name), f"VadConfig.{name}", 0, integer=True)
        if self.quiet_lead_ms is not None:
            check_number(self.quiet_lead_ms, "VadConfig.quiet_lead_ms", 0, integer=True)
        check_number(self.min_silence_ms, "VadConfig.min_silence_ms", 1, integer=True)
        if self.shrink_s is not None:
            check_number(self.shrink_s, "VadConfig.shrink_s", above=0)
        check_number(self.max_segment_s, "VadConfig.max_segment_s", 1)
        if self.pause_cut_s is not None:
            check_number(self.pause_cut_s, "VadConfig.pause_cut_s", 1, self.max_segment_s)
        check_number(self.cut_search_s, "VadConfig.cut_search_s", above=0, below=self.max_segment_s)

    @property
    def off_threshold(self) -> float:
        """Probability below which a window counts as silence."""
        if self.negative_threshold is None:
            return self.threshold - 0.15
        return self.negative_threshold


def _require(name: str, value: object, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"VadConfig.{name}={value!r}: expected {expected}")


class VadModel:
    """Silero's 16 kHz network as a pure function of (window, state).

    The wheel's TorchScript module keeps the LSTM state and the last context samples as
    attributes of the outer module, so an instance could serve one stream only. Its ``_model``
    submodule is stateless: ``(windows with context (B, 576), state (2, B, 128)) ->
    (probability (B, 1), state)``. Calling it directly lets every session carry its own state
    while all sessions share one set of weights, with no lock and no state swapping.

    A call costs about 0.3 ms of one core per 32 ms window. That is too little work to split
    across threads: with several torch intra-op threads on a busy CPU each call gets several
    times slower, so a server running many sessions does best with few torch threads.
    """

    def __init__(self, network: torch.jit.ScriptModule) -> None:
        self.network = network

    @classmethod
    def load(cls, path: str | Path | None = None) -> VadModel:
        """Load the TorchScript model shipped in the silero-vad wheel (or the file at ``path``).

        The file is located without importing ``silero_vad``: importing it calls
        ``torch.set_num_threads(1)`` for the whole process.
        """
        path = Path(path) if path is not None else silero_model_path()
        if not path.is_file():
            raise CheckpointError(f"silero-vad model {path} does not exist")
        try:
            with warnings.catch_warnings():
                # The wheel ships this network as TorchScript only (its safetensors file holds
                # other, older weights), so torch's deprecation notice is no one's to act on.
                warnings.filterwarnings(
                    "ignore", "`torch.jit.load` is deprecated", DeprecationWarning
                )
                outer = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"silero-vad model {path} cannot be loaded: {exc}") from exc
        network = getattr(outer, "_model", None)
        if network is None or getattr(network, "context_size_samples", None) != CONTEXT:
            raise CheckpointError(
                f"silero-vad model {path} has no 16 kHz submodule '_model' with "
                f"{CONTEXT} context samples; expected the silero-vad 5/6 TorchScript file"
            )
        model = cls(network.eval())
        probability, state = model(torch.zeros(1, CONTEXT + WINDOW), model.initial_state())
        if probability.shape != (1,) or state.shape != STATE_SHAPE:
            raise CheckpointError(
                f"silero-vad model {path} returned shapes {tuple(probability.shape)} and "
                f"{tuple(state.shape)}; expected (1,) and {STATE_SHAPE}"
            )
        return model

    @staticmethod
    def initial_state(batch: int = 1) -> torch.Tensor:
        """The LSTM state of a stream that has not started: zeros (2, batch, 128)."""
        return torch.zeros(STATE_SHAPE[0], batch, STATE_SHAPE[2])

    @torch.inference_mode()
    def __call__(
        self, windows: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech probability of each window: (B, 64 + 512), (2, B, 128) -> (B,), (2, B, 128)."""
        probability, state = self.network(windows, state)  # (B, 1), (2, B, 128)
        return probability[:, 0], state


def silero_model_path() -> Path:
    """The TorchScript file inside the installed silero-vad wheel."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("silero-vad is not installed: pip install 'mooer[vad]'")
    return Path(spec.submodule_search_locations[0]) / "data" / "silero_vad.jit"


@functools.cache
def shared_vad_model() -> VadModel:
    """The process-wide model every ``StreamingVad`` uses unless given another."""
    return VadModel.load()


@dataclass(frozen=True)
class SpeechStarted:
    """Speech began at ``sample`` (padding included); sent once the speech lasted min_speech_ms."""

    sample: int


@dataclass(frozen=True, eq=False)
class SpeechEnded:
    """A finished segment: samples ``[start, end)`` of the stream, padding included.

    ``forced`` is True when the segment was closed by ``max_segment_s`` rather than by
    ``min_silence_ms`` of silence: the speaker may still be talking, and when they are a
    ``SpeechStarted(end)`` follows at once. ``pause``: the first sample of the pause that
    ended it (as ``pause_start`` gave it), and ``waited`` the samples of it heard before it
    was ended (None and 0 for a forced cut or a flush).
    """

    start: int
    end: int
    audio: np.ndarray  # float32 (end - start,)
    forced: bool = False
    waited: int = 0
    pause: int | None = None

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpeechEnded):
            return NotImplemented
        return (self.start, self.end, self.forced) == (
            other.start,
            other.end,
            other.forced,
        ) and np.array_equal(self.audio, other.audio)

    __hash__ = None  # type: ignore[assignment]  # holds an array


@dataclass(frozen=True, eq=False)
class PauseBegan:
    """A pause began in the open segment at ``sample`` (its first window has just been heard;
    reported by a ``StreamingVad`` made with ``pauses=True``). ``audio``: the segment as this
    pause would end it, the pause after its first window taken as silence (the
    ``SpeechEnded.audio`` of that pause, where it is silence), so that its final can be decoded
    before the endpoint wait is over; whether it ends the segment is still to be heard."""

    sample: int
    audio: np.ndarray  # float32 (N,)

    __hash__ = None  # type: ignore[assignment]  # holds an array


VadEvent = SpeechStarted | SpeechEnded | PauseBegan


class Phase(enum.Enum):
    SILENCE = "silence"
    ONSET = "onset"  # speech heard, not yet for min_speech_ms
    SPEECH = "speech"  # inside a segment (SpeechStarted sent)


class SampleTape:
    """The stream's recent samples, addressed by absolute offset, with amortised O(1) appends."""

    def __init__(self) -> None:
        self._data = np.zeros(WINDOW * 64, dtype=np.float32)
        self._first = 0  # absolute offset of _data[_head]
        self._head = 0
        self._tail = 0  # _data[_head:_tail] holds the samples kept

    @property
    def end(self) -> int:
        """Absolute offset just past the last sample received."""
        return self._first + self._tail - self._head

    def append(self, samples: np.ndarray) -> None:
        if self._tail + samples.size > self._data.size:
            kept = self._data[self._head : self._tail]
            size = max(self._data.size, 2 * (kept.size + samples.size))
            data = self._data if size == self._data.size else np.empty(size, dtype=np.float32)
            data[: kept.size] = kept  # numpy copies overlapping ranges correctly
            self._data, self._head, self._tail = data, 0, kept.size
        self._data[self._tail : self._tail + samples.size] = samples
        self._tail += samples.size

    def slice(self, start: int, end: int) -> np.ndarray:
        """A copy of samples ``[start, end)``; they must not have been dropped."""
        if start < self._first:
            raise AssertionError(f"samples from {start} were dropped (kept from {self._first})")
        head = self._head + start - self._first
        return self._data[head : head + end - start].copy()

    def window(self, start: int) -> np.ndarray:
        """A view of the WINDOW samples from ``start``."""
        head = self._head + start - self._first
        return self._data[head : head + WINDOW]

    def drop_before(self, sample: int) -> None:
        sample = min(sample, self.end)
        if sample > self._first:
            self._head += sample - self._first
            self._first = sample


@dataclass
class VadState:
    """One stream's state; everything a session must not share with another."""

    rnn: torch.Tensor = field(default_factory=VadModel.initial_state)  # (2, 1, 128)
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, dtype=np.float32))
    tape: SampleTape = field(default_factory=SampleTape)
    analysed: int = 0  # samples scored so far; a multiple of WINDOW
    probability: float = 0.0  # of the last window scored
    phase: Phase = Phase.SILENCE
    onset: int = 0  # first sample of the window that began ONSET
    segment_start: int = 0  # of the open segment (SPEECH)
    silence_start: int | None = None  # first sample of the current run of silent windows
    pause_start: int | None = None  # of the current run of pause windows (silent or quiet)
    quiet_start: int | None = None  # of the current run of quiet blocks (BLOCK samples each)
    quiet_level: float = 0.0  # the sum of their RMS
    pauses: list[tuple[int, int, float]] = field(default_factory=list)
    """(start, end, mean RMS) of the open segment's finished quiet runs of min_pause_ms or more."""
    loudest: float = 0.0  # RMS of the open segment's loudest window
    hinted: bool = False  # the open segment's transcript showed a sentence end: shortest wait
    last_end: int = 0  # end of the last segment: the next one starts no earlier
    recent: deque[tuple[int, float, float]] = field(default_factory=deque)
    """(centre sample, probability, RMS) of the windows of the open segment, most recent last."""

    def reset(self) -> None:
        fresh = VadState()
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))


class StreamingVad:
    """Streaming detector for one session: ``feed`` samples, get turn events.

    Every window of 512 samples gets a speech probability. A run of speech windows lasting
    ``min_speech_ms`` opens a segment (``SpeechStarted``); ``min_silence_ms`` of silence closes
    it (``SpeechEnded``). Results do not depend on how the stream is chunked.
    """

    def __init__(
        self, config: VadConfig | None = None, model: VadModel | None = None, pauses: bool = False
    ) -> None:
        self.config = config or VadConfig()
        self.pauses = pauses  # report PauseBegan (where the wait shrinks)
        self._began: PauseBegan | None = None  # found by the window being scored
        self.model = model or shared_vad_model()
        self.state = VadState()
        self._pad = ms_to_samples(self.config.speech_pad_ms)
        lead = self.config.quiet_lead_ms
        self._quiet_lead = None if lead is None else ms_to_samples(lead)
        self._min_speech = ms_to_samples(self.config.min_speech_ms)
        self._min_silence = ms_to_samples(self.config.min_silence_ms)
        self._short_silence = min(ms_to_samples(self.config.short_silence_ms), self._min_silence)
        shrink = self.config.shrink_s
        self._shrink = None if shrink is None else max(ms_to_samples(shrink * 1000), 1)
        self._max_segment = ms_to_samples(self.config.max_segment_s * 1000)
        self._cut_search = max(ms_to_samples(self.config.cut_search_s * 1000), WINDOW)
        pause_cut = self.config.pause_cut_s
        self._pause_cut = None if pause_cut is None else ms_to_samples(pause_cut * 1000)
        self._min_pause = max(ms_to_samples(self.config.min_pause_ms), BLOCK)

    def reset(self) -> None:
        """Forget the stream: the next sample fed is sample 0 of a new one."""
        self.state.reset()

    @property
    def speech_probability(self) -> float:
        """Probability of speech in the last 32 ms window scored (for barge-in)."""
        return self.state.probability

    @property
    def in_speech(self) -> bool:
        return self.state.phase is Phase.SPEECH

    @property
    def samples_received(self) -> int:
        return self.state.tape.end

    @property
    def pause_start(self) -> int | None:
        """First sample of the pause under way in the open segment, the one a shrinking
        endpoint wait counts (silent or ``PAUSE_DB`` quiet windows); None outside one."""
        s = self.state
        return s.pause_start if s.phase is Phase.SPEECH else None

    def _audio_if_pause_ends(self) -> np.ndarray:
        """The open segment's audio as the pause from its first window on would end it: see
        ``PauseBegan``. (N,) float32."""
        s = self.state
        assert s.phase is Phase.SPEECH and s.pause_start is not None
        end = s.pause_start + min(self._pad, -(-self._wait() // WINDOW) * WINDOW)  # whole windows
        heard = s.tape.slice(s.segment_start, min(end, s.pause_start + WINDOW))
        return np.pad(heard, (0, end - s.segment_start - heard.size))

    def current_segment(self) -> np.ndarray:
        """Samples of the open segment so far (empty outside one), for partial results."""
        s = self.state
        if s.phase is not Phase.SPEECH:
            return np.zeros(0, dtype=np.float32)
        return s.tape.slice(s.segment_start, s.tape.end)

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        """Take float samples in [-1, 1] at 16 kHz, (N,) for any N; return the events they bring."""
        self.hear(samples)
        return score_due([self])[0]

    def hear(self, samples: np.ndarray) -> bool:
        """Take samples as ``feed`` does without scoring them: ``score_due`` scores them later,
        with other streams' windows in the same network calls. Whether a window is due."""
        self.state.tape.append(check_chunk(samples))
        return self.window_due

    @property
    def window_due(self) -> bool:
        """Samples heard and not scored yet fill a window."""
        s = self.state
        return s.analysed + WINDOW <= s.tape.end

    def flush(self) -> list[VadEvent]:
        """End of stream: close the open segment at the last sample received (or its silence)."""
        s = self.state
        events: list[VadEvent] = []
        if s.phase is Phase.SPEECH:
            end = s.tape.end
            if s.silence_start is not None:
                end = min(end, s.silence_start + self._pad)
            events.append(self._close(min(end, s.segment_start + self._max_segment), False))
        s.phase = Phase.SILENCE
        s.tape.drop_before(self._keep_from())
        return events

    def _network_input(self, row: np.ndarray) -> None:
        """Write the due window after its context into ``row`` (64 + 512,)."""
        s = self.state
        row[:CONTEXT] = s.context
        row[CONTEXT:] = s.tape.window(s.analysed)

    def _scored(self, p: float, rnn: torch.Tensor) -> list[VadEvent]:
        """The due window got probability ``p`` and left the LSTM in state ``rnn`` (2, 1, 128):
        move on by it; the events it brings."""
        s = self.state
        window = s.tape.window(s.analysed)
        s.rnn, s.context, s.probability = rnn, window[-CONTEXT:].copy(), p
        events = self._score(window, p)
        s.tape.drop_before(self._keep_from())
        return events

    def _score(self, window: np.ndarray, p: float) -> list[VadEvent]:
        s = self.state
        start = s.analysed
        s.analysed += WINDOW
        rms = math.sqrt(float(np.dot(window, window)) / WINDOW)
        if s.phase is Phase.SPEECH:
            s.recent.append((start + WINDOW // 2, p, rms))
            if len(s.recent) > self._cut_search // WINDOW + 1:
                s.recent.popleft()
            self._follow_pauses(window, start)
        events = self._advance(p, rms, start, s.analysed)
        if self._began is not None:  # before what the same window ended
            events.insert(0, self._began)
            self._began = None
        if s.phase is Phase.SPEECH:
            s.loudest = max(s.loudest, rms)
        return events

    def _follow_pauses(self, window: np.ndarray, start: int) -> None:
        """Note the runs of quiet 8 ms blocks (``PAUSE_DB`` below the segment's loudest window)
        that are long enough to cut at: finer than a window, so a 70 ms pause between two
        sentences is seen whole."""
        s = self.state
        level = s.loudest * QUIET
        for k, rms in enumerate(_block_rms(window).tolist()):  # (4,)
            at = start + k * BLOCK
            if rms < level:
                if s.quiet_start is None:
                    s.quiet_start, s.quiet_level = at, 0.0
                s.quiet_level += rms
            elif s.quiet_start is not None:
                if at - s.quiet_start >= self._min_pause:
                    mean = s.quiet_level * BLOCK / (at - s.quiet_start)
                    s.pauses.append((s.quiet_start, at, mean))
                s.quiet_start = None

    def hint_sentence_end(self, segment_start: int) -> list[VadEvent]:
        """The partial transcript of the open segment (the one from ``segment_start``) shows a
        finished sentence with more words after it (a model that punctuates): the segment is
        cut now at its best pause so far, as ``pause_cut_s`` would cut it later, or, where it
        has held none, its endpoint wait drops to ``short_silence_ms`` whatever its length (the
        next short pause ends it). Ignored for another segment (the hint came late) and where
        the wait does not shrink (chat turns). Events as ``feed``'s."""
        s = self.state
        if s.phase is not Phase.SPEECH or s.segment_start != segment_start or self._shrink is None:
            return []
        if s.pauses:
            return self._cut_at_pause()
        s.hinted = True
        return []

    def endpoint_wait(self, length: int) -> int:
        """Samples of pause that end a segment ``length`` samples long when the pause began."""
        if self._shrink is None:
            return self._min_silence
        shrunk = (self._min_silence - self._short_silence) * min(length / self._shrink, 1.0)
        return self._min_silence - int(shrunk)

    def _advance(self, p: float, rms: float, start: int, end: int) -> list[VadEvent]:
        """Move the turn state machine on by the window ``[start, end)`` of probability ``p``
        and root-mean-square level ``rms``."""
        s, config = self.state, self.config
        if s.phase is Phase.SILENCE and p >= config.threshold:
            s.phase, s.onset = Phase.ONSET, start
        if s.phase is Phase.ONSET:
            if p < config.off_threshold:
                s.phase = Phase.SILENCE
            elif end - s.onset >= self._min_speech:
                return [self._open(self._start_before(s.onset, end))]
            return []
        if s.phase is Phase.SILENCE:
            return []
        if p >= config.threshold:
            s.silence_start = None
        elif p < config.off_threshold and s.silence_start is None:
            s.silence_start = start
        if s.silence_start is not None and end - s.silence_start >= self._min_silence:
            return [self._close_in_pause(s.silence_start, end)]
        if self._shrink is not None and self._pause_ends_turn(p, rms, start, end):
            assert s.pause_start is not None
            return [self._close_in_pause(s.pause_start, end)]
        if self._pause_cut is not None and s.pauses and end - s.segment_start >= self._pause_cut:
            return self._cut_at_pause()
        if end + WINDOW // 2 - s.segment_start > self._max_segment:
            return self._cut(end)
        return []

    def _pause_ends_turn(self, p: float, rms: float, start: int, end: int) -> bool:
        """Follow the run of pause windows; whether it is long enough for the segment's length."""
        s = self.state
        quiet = rms < s.loudest * QUIET
        if not quiet and (self.config.quiet_pauses or p >= self.config.off_threshold):
            s.pause_start = None
            return False
        if s.pause_start is None:
            s.pause_start = start
            if self.pauses:
                self._began = PauseBegan(start, self._audio_if_pause_ends())
        return end - s.pause_start >= self._wait()

    def _wait(self) -> int:
        """Samples of the pause under way that end the open segment: the wait for its length
        when the pause began, the shortest once a sentence end was hinted."""
        s = self.state
        assert s.pause_start is not None
        return (
            self._short_silence if s.hinted else self.endpoint_wait(s.pause_start - s.segment_start)
        )

    def _cut(self, end: int) -> list[VadEvent]:
        """Close a segment that reached max_segment_s, at its quietest recent point."""
        s = self.state
        limit = s.segment_start + self._max_segment
        if s.silence_start is not None:  # speech has stopped, though not for min_silence_ms yet
            return [self._close(min(s.silence_start + self._pad, end, limit), True)]
        candidates = [
            w for w in s.recent if w[0] > s.segment_start and w[0] >= end - self._cut_search
        ]
        # Lowest probability first (in steps of 0.05, below which it is noise), then least energy.
        cut = min(candidates, key=lambda w: (round(w[1] * 20), w[2]))[0]
        return [self._close(cut, True), self._open(cut)]

    def _cut_at_pause(self) -> list[VadEvent]:
        """Close a segment pause_cut_s long in the middle of its best pause, and go on from
        there: the longest pause, the quietest of equally long ones."""
        s = self.state
        start, end, _ = max(s.pauses, key=lambda pause: (pause[1] - pause[0], -pause[2]))
        later = [pause for pause in s.pauses if pause[0] >= end]
        cut = (start + end) // 2
        events: list[VadEvent] = [self._close(cut, True), self._open(cut)]
        s.pauses += later  # the new segment's own
        return events

    def _start_before(self, onset: int, end: int) -> int:
        """Where a segment whose voice the network heard from ``onset`` (scored up to ``end``)
        starts: ``speech_pad_ms`` before it (the network hears a soft onset late), no earlier
        than the last segment's end, and with ``quiet_lead_ms`` no more than that before the
        first sound (an 8 ms block within ``PAUSE_DB`` of the loudest one heard since)."""
        s = self.state
        start = max(onset - self._pad, s.last_end)
        if self._quiet_lead is None:
            return start
        level = _block_rms(s.tape.slice(start, end))  # (K,)
        sound = int(np.argmax(level >= level.max() * QUIET))
        return max(start, start + sound * BLOCK - self._quiet_lead)

    def _open(self, start: int) -> SpeechStarted:
        s = self.state
        s.phase, s.segment_start, s.silence_start = Phase.SPEECH, start, None
        s.pause_start, s.quiet_start, s.loudest, s.hinted = None, None, 0.0, False
        s.recent.clear()
        s.pauses.clear()
        return SpeechStarted(start)

    def _close_in_pause(self, pause: int, end: int) -> SpeechEnded:
        """Close the segment ended by the pause from ``pause``, heard up to ``end``."""
        return self._close(min(pause + self._pad, end), False, end - pause, pause)

    def _close(
        self, end: int, forced: bool, waited: int = 0, pause: int | None = None
    ) -> SpeechEnded:
        s = self.state
        s.phase, s.silence_start, s.last_end = Phase.SILENCE, None, end
        audio = s.tape.slice(s.segment_start, end)
        return SpeechEnded(s.segment_start, end, audio, forced, waited, pause)

    def _keep_from(self) -> int:
        """First sample a future segment may still need."""
        s = self.state
        if s.phase is Phase.SPEECH:
            return s.segment_start
        first = s.onset if s.phase is Phase.ONSET else s.analysed
        return min(max(first - self._pad, s.last_end), s.analysed)


def _block_rms(samples: np.ndarray) -> np.ndarray:
    """Root-mean-square level of each whole 8 ms block of (N,) ``samples``: (N // BLOCK,)."""
    blocks = samples[: samples.size // BLOCK * BLOCK].reshape(-1, BLOCK)  # (K, 128)
    return np.sqrt((blocks**2).mean(axis=1))


def score_due(vads: Sequence[StreamingVad]) -> list[list[VadEvent]]:
    """Score every window the streams ``vads`` have heard and not scored, the due windows of
    all streams that share a network in one call per round (a round: each stream's next
    window); the events of each stream, in its order, as its ``feed`` would have given them.

    A call scores 8 windows in about twice the time of one, so a server scoring its sessions
    together spends a fraction of the CPU. Rows of a batch may differ from the same window
    scored alone in the last bits (about 1e-8: the matrix products block differently), far
    below any threshold's resolution.
    """
    events: list[list[VadEvent]] = [[] for _ in vads]
    due = [k for k, vad in enumerate(vads) if vad.window_due]
    while due:
        groups: dict[int, list[int]] = {}  # by network
        for k in due:
            groups.setdefault(id(vads[k].model), []).append(k)
        for group in groups.values():
            x = np.empty((len(group), CONTEXT + WINDOW), dtype=np.float32)  # (B, 64 + 512)
            for row, k in enumerate(group):
                vads[k]._network_input(x[row])
            rnn = torch.cat([vads[k].state.rnn for k in group], dim=1)  # (2, B, 128)
            probability, rnn = vads[group[0]].model(torch.from_numpy(x), rnn)  # (B,), (2, B, 128)
            for row, (k, p) in enumerate(zip(group, probability.tolist())):
                events[k] += vads[k]._scored(p, rnn[:, row : row + 1])
        due = [k for k in due if vads[k].window_due]
    return events


def check_chunk(samples: np.ndarray) -> np.ndarray:
    """A live audio chunk as float32 (N,), or an AudioError naming what is wrong with it."""
    x = np.asarray(samples)
    if x.ndim != 1:
        raise AudioError(f"VAD input must be mono samples of shape (N,), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise AudioError(
            f"VAD input must be float samples in [-1, 1] at 16 kHz, got dtype {x.dtype}"
            " (scale int16 PCM by 1/32768)"
        )
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise AudioError(f"VAD input holds a NaN or infinite sample at index {bad} of the chunk")
    return x
