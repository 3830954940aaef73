"""The ``mooer`` command: a thin argument layer over the library; errors become one clear line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mooer.checkpoint import MTL_VARIANTS
from mooer.errors import MooerError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint folder or hub id (default: the bundled demo model)")
    p.add_argument("--llm", help="Qwen2 base model folder (MooER-MTL checkpoints ship without it)")
    p.add_argument("--variant", choices=MTL_VARIANTS, help="MTL checkpoint folder")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, musa, mps or auto")
    p.add_argument("--dtype", default="auto", help="LLM precision: fp32, bf16, fp16 or auto")
    p.add_argument("--heads", type=int, default=4, help="encoder attention heads (Paraformer: 4)")


def add_quantize_arg(p: argparse.ArgumentParser) -> None:
    """``--quantize``, for every command that loads a model to decode with (never to train)."""
    p.add_argument(
        "--quantize", metavar="int8", help="int8 encoder, adapter and in-process LLM on the CPU"
    )


def _add_llm_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llm-backend", choices=["hf", "vllm"], default="hf",
                   help="where the LLM runs: transformers in this process, or vLLM")  # fmt: skip
    p.add_argument(
        "--llm-url", help="a vLLM server's http://HOST:PORT/v1 (with --llm-backend vllm)"
    )


def cmd_transcribe(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mooer.llm.backend import check_hotwords
    from mooer.llm.decoding import OFFLINE
    from mooer.model import load_model
    from mooer.transcribe import read_inputs, transcribe

    pairs = read_inputs(args.audio)
    options = replace(OFFLINE, hotwords=_hotwords(args))
    if args.beam is not None:
        options = replace(options, num_beams=args.beam)
    if args.max_new_tokens is not None:
        options = replace(options, max_new_tokens=args.max_new_tokens)
    model = load_model(
        args.model, llm=args.llm, task=args.task, variant=args.variant,
        device=args.device, dtype=args.dtype, attention_heads=args.heads, quantize=args.quantize,
        llm_backend=args.llm_backend, llm_url=args.llm_url,
    )  # fmt: skip
    try:
        if options.hotwords is not None:
            check_hotwords(model.llm_backend)
        results = transcribe(
            model,
            [path for _, path in pairs],
            task=args.task,
            options=options,
            batch_size=args.batch_size,
            names=[name for name, _ in pairs],
            progress=len(pairs) > 1 and sys.stderr.isatty() or args.progress,
            keep_going=len(pairs) > 1,
            max_seconds=args.max_audio,
        )
    finally:
        model.llm_backend.close()  # vLLM's engine process, if any
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            print(f"mooer: error: {r.error}", file=sys.stderr)
        if args.json:
            print(r.to_json(), flush=True)
        elif not r.error:
            line = f"{r.text}\t{r.translation}" if args.task == "mtl" else r.text
            print(f"{r.audio}\t{line}" if len(results) > 1 else line, flush=True)
    return 1 if failed else 0


def cmd_export_vllm(args: argparse.Namespace) -> int:
    from mooer.llm.vllm_export import merged_llm_dir
    from mooer.llm.vllm_remote import server_command
    from mooer.model import load_model

    model = load_model(
        args.model, llm=args.llm, variant=args.variant,
        device="cpu", dtype=args.dtype, attention_heads=args.heads,
    )  # fmt: skip
    folder = merged_llm_dir(model)
    print(folder)
    print(f"serve it with: {server_command(folder)}", file=sys.stderr)
    return 0


def cmd_fabricate(args: argparse.Namespace) -> int:
    from mooer.fabricate import LAYOUTS, fabricate

    root = fabricate(args.out, layout=args.layout, seed=args.seed, llm_size=args.llm_size)
    print(f"wrote a fabricated {LAYOUTS[args.layout]} checkpoint to {root}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mooer.server.commands import serve_main

    ray = None
    if args.ray:
        from mooer.server.ray_serve import RayOptions

        ray = RayOptions(replicas=args.replicas, max_replicas=args.max_replicas,
                         target_sessions=args.target_sessions, address=args.ray_address,
                         replica_cpus=args.replica_cpus, upscale_delay_s=args.upscale_delay,
                         downscale_delay_s=args.downscale_delay)  # fmt: skip

    return serve_main(
        model=args.model, llm=args.llm, variant=args.variant, device=args.device,
        dtype=args.dtype, heads=args.heads, host=args.host, port=args.port,
        funasr_port=args.funasr_port, api_key=args.api_key, funasr_open=args.funasr_open,
        allow_origins=args.allow_origin,
        max_sessions=args.max_sessions, max_session_audio_s=args.max_session_audio,
        max_request_audio_s=args.max_request_audio,
        idle_timeout_s=args.idle_timeout, threads=args.threads, beam=args.beam,
        log_level=args.log_level, record=args.record, db=args.db, quantize=args.quantize,
        record_audio=args.record_audio,
        llm_backend=args.llm_backend, llm_url=args.llm_url, ray=ray,
        speaker_threshold=args.speaker_threshold,
    )  # fmt: skip


def cmd_meetings(args: argparse.Namespace) -> int:
    from mooer.meetings import commands

    if args.action == "list":
        return commands.list_main(args.db, search=args.search, limit=args.limit, as_json=args.json)
    if args.action == "show":
        return commands.export_main(args.id, "json" if args.json else "txt", db=args.db)
    if args.action == "export":
        return commands.export_main(
            args.id, args.format, db=args.db, name=args.name, folder=args.dir
        )
    if args.action == "rename":
        return commands.rename_main(args.id, args.old, args.new, db=args.db)
    return commands.delete_main(args.id, db=args.db)


def cmd_stream(args: argparse.Namespace) -> int:
    from mooer.server.commands import stream_main

    return stream_main(args.file, server=args.server, mode=args.mode, api_key=args.api_key,
                       realtime=args.realtime, audio_out=args.audio_out, play=args.play,
                       output_device=args.output)  # fmt: skip


def cmd_mic(args: argparse.Namespace) -> int:
    from mooer.server.commands import mic_main

    return mic_main(server=args.server, mode=args.mode, api_key=args.api_key, device=args.input,
                    audio_out=args.audio_out, play=args.play,
                    output_device=args.output)  # fmt: skip


def cmd_s2st(args: argparse.Namespace) -> int:
    from mooer.speak import s2st_command

    return s2st_command(
        args.audio, args.out, model=args.model, llm=args.llm, variant=args.variant,
        device=args.device, dtype=args.dtype, heads=args.heads, task=args.task, voice=args.voice,
        backend=args.backend, rate=args.rate, max_new_tokens=args.max_new_tokens,
        quantize=args.quantize,
    )  # fmt: skip


def cmd_speak(args: argparse.Namespace) -> int:
    from mooer.speak import speak_command

    return speak_command(args.text, args.out, language=args.language, voice=args.voice,
                         backend=args.backend, rate=args.rate)  # fmt: skip


def _add_db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        help="meeting store: a SQLite file or URL, or postgresql+psycopg://USER@HOST/DB "
        "(default: $XDG_DATA_HOME/mooer/meetings.db)",
    )


def _add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="http://127.0.0.1:8000", help="a running `mooer serve`")
    p.add_argument("--mode", choices=["asr", "ast", "asr+ast", "chat"], default="asr")
    p.add_argument("--api-key", help="bearer key (default: $MOOER_API_KEY)")
    p.add_argument(
        "--audio-out",
        metavar="FILE.wav",
        help="spoken replies (chat) or translations (ast) to a wav",
    )
    p.add_argument(
        "--play", action="store_true", help="play spoken replies (chat) or translations (ast)"
    )
    p.add_argument("--output", help="sounddevice output device for --play (index or name)")


def _hotwords(args: argparse.Namespace):
    """The hotwords of ``--hotwords`` (comma-separated) and ``--hotwords-file``, or None."""
    from mooer.errors import ConfigError
    from mooer.llm.biasing import hotwords_from_lines, hotwords_from_list

    words = (args.hotwords or "").split(",")
    if args.hotwords_file:
        try:
            text = Path(args.hotwords_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--hotwords-file {args.hotwords_file}: {exc}") from exc
        found = hotwords_from_lines(text, "--hotwords-file")
        words += found.words if found else ()
    return hotwords_from_list(words, "--hotwords/--hotwords-file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mooer", description="LLM-based speech recognition, translation and spoken chat."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transcribe", help="speech to text (asr), to English (ast), or both (mtl)")
    _add_model_args(p)
    add_quantize_arg(p)
    _add_llm_backend_args(p)
    p.add_argument("audio", nargs="+", help="audio files, Kaldi wav.scp or .jsonl lists")
    p.add_argument("--task", choices=["asr", "ast", "mtl"], default="asr")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--beam", type=int, help="beam size (default 4)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--progress", action="store_true", help="progress bar on stderr")
    p.add_argument("--max-audio", type=float, help="refuse a file holding more seconds of audio")
    p.add_argument("--hotwords", help='words to favour, comma-separated: "sixteen,New York"')
    p.add_argument("--hotwords-file", help="words to favour, one per line")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser(
        "serve", help="websocket + HTTP server (OpenAI Realtime, FunASR, browser page)"
    )
    _add_model_args(p)
    add_quantize_arg(p)
    _add_llm_backend_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--funasr-port", type=int, help="also serve the FunASR protocol on this port")
    p.add_argument("--api-key", help="require this bearer key (default: $MOOER_API_KEY)")
    p.add_argument(
        "--funasr-open",
        action="store_true",
        help="the --funasr-port takes clients without the key (for a trusted network)",
    )
    p.add_argument("--allow-origin", action="append", default=[], help="browser origin allowed")
    p.add_argument("--max-sessions", type=int, default=16)
    p.add_argument("--max-session-audio", type=float, default=3600.0, help="seconds per session")
    p.add_argument(
        "--max-request-audio", type=float, default=3600.0,
        help="seconds of decoded audio per HTTP upload or FunASR file",
    )  # fmt: skip
    p.add_argument("--idle-timeout", type=float, default=120.0, help="seconds")
    p.add_argument("--threads", type=int, help="torch threads of the model worker")
    p.add_argument("--beam", type=int, help="beam size of final results")
    p.add_argument("--log-level", default="info")
    p.add_argument("--record", action="store_true", help="keep every live session as a meeting")
    p.add_argument(
        "--record-audio", action="store_true",
        help="recorded meetings keep each segment's audio (FLAC), for review",
    )  # fmt: skip
    _add_db_arg(p)
    p.add_argument(
        "--speaker-threshold", type=float, default=None,
        help="cosine similarity a segment needs to join a speaker (default 0.78; higher splits)",
    )  # fmt: skip
    r = p.add_argument_group("Ray Serve (docs/scaling.md; needs: pip install 'mooer[ray]')")
    r.add_argument("--ray", action="store_true", help="serve from replicas behind Ray Serve")
    r.add_argument("--replicas", type=int, default=2, help="replicas (autoscaling: the least)")
    r.add_argument("--max-replicas", type=int, help="autoscale up to this many replicas")
    r.add_argument("--target-sessions", type=int,
                   help="live sessions per replica autoscaling aims at (default: half "
                   "--max-sessions)")  # fmt: skip
    r.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    r.add_argument("--replica-cpus", type=float, default=1.0, help="Ray CPUs per replica")
    r.add_argument("--upscale-delay", type=float, default=30.0,
                   help="seconds the live sessions must call for another replica before one "
                   "is added")  # fmt: skip
    r.add_argument("--downscale-delay", type=float, default=600.0,
                   help="seconds they must call for fewer before a replica is drained away")  # fmt: skip
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("meetings", help="kept live transcripts: list, show, export, rename, delete")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("list", help="the meetings, newest first")
    a.add_argument("--search", help="only meetings whose transcript or translation holds this")
    a.add_argument("--limit", type=int, default=100)
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a = actions.add_parser("show", help="a meeting's segments with times and translations")
    a.add_argument("id")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("export", help="a meeting as SRT, WebVTT, text, JSON or Markdown")
    a.add_argument("id")
    a.add_argument("--format", default="srt", help="srt, vtt, txt, json or md (default srt)")
    a.add_argument("--name", help="write to this file (a bare name) instead of standard output")
    a.add_argument("--dir", default=".", help="the folder --name is written in")
    a = actions.add_parser("rename", help="rename a speaker in every segment of a meeting")
    a.add_argument("id")
    a.add_argument("old", help="the speaker's name now, e.g. 'speaker 1'")
    a.add_argument("new", help="the name to give")
    a = actions.add_parser("delete", help="remove a meeting, its segments and their audio")
    a.add_argument("id")
    for a in actions.choices.values():
        _add_db_arg(a)
    p.set_defaults(func=cmd_meetings)

    p = sub.add_parser("s2st", help="Chinese speech to English speech (and its text)")
    _add_model_args(p)
    add_quantize_arg(p)
    p.add_argument("audio", help="input speech")
    p.add_argument("-o", "--out", required=True, help="output wav")
    p.add_argument("--task", choices=["s2s_trans", "s2s_chat"], default="s2s_trans",
                   help="translate (default), or answer the question aloud")  # fmt: skip
    p.add_argument(
        "--voice", help="a voice wav (speech head) or an espeak variant (m1..m8, f1..f5)"
    )
    p.add_argument("--backend", default="espeak", help="text-to-speech backend without a head")
    p.add_argument("--rate", type=int, help="output sample rate (default: the voice's own)")
    p.add_argument("--max-new-tokens", type=int)
    p.set_defaults(func=cmd_s2st)

    p = sub.add_parser("speak", help="text to speech (espeak-ng, or CosyVoice when installed)")
    p.add_argument("text", help="what to say ('-' reads standard input)")
    p.add_argument("-o", "--out", required=True, help="output wav")
    p.add_argument("--language", default="en", help="en or zh")
    p.add_argument("--voice", help="espeak variant m1..m8, f1..f5")
    p.add_argument("--backend", default="espeak")
    p.add_argument("--rate", type=int, help="output sample rate, e.g. 16000 or 24000")
    p.set_defaults(func=cmd_speak)

    p = sub.add_parser("stream", help="stream an audio file to a server, print live results")
    p.add_argument("file")
    _add_client_args(p)
    p.add_argument("--realtime", action="store_true", help="send at real-time pace")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("mic", help="live captions from the microphone through a server")
    _add_client_args(p)
    p.add_argument("--input", help="sounddevice input device (index or name)")
    p.set_defaults(func=cmd_mic)

    for name, (summary, _) in SEPARATE.items():
        if " " not in name:
            sub.add_parser(name, help=summary, add_help=False)

    p = sub.add_parser(
        "export-vllm", help="write the LLM with its LoRA merged for a vLLM server; print its folder"
    )
    _add_model_args(p)
    p.set_defaults(func=cmd_export_vllm)

    p = sub.add_parser("fabricate", help="write a tiny random checkpoint in a released layout")
    p.add_argument("out", help="output folder")
    p.add_argument("--layout", choices=["mtl-5k", "mtl-80k", "omni"], default="mtl-5k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm-size", choices=["tiny", "0.5b"], default="tiny",
                   help="the LLM's shape: tiny, or Qwen2-0.5B's (for benchmarks)")  # fmt: skip
    p.set_defaults(func=cmd_fabricate)
    return parser


def _train_parser() -> argparse.ArgumentParser:
    from mooer.train.trainer import train_command

    p = argparse.ArgumentParser(prog="mooer train", description=train_command.__doc__)
    p.add_argument("config", help="a YAML training config")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. optim.lr=1e-4 (repeatable)",
    )
    p.set_defaults(func=lambda args: train_command(args.config, args.overrides))
    return p


def _synth_parser() -> argparse.ArgumentParser:
    from mooer.train.synth import synth_command

    p = argparse.ArgumentParser(
        prog="mooer train synth",
        description="Synthesise the template corpus with espeak-ng: training audio from "
        "TRAIN_VOICES with augmentation, held-out audio (unseen sentences) from voices never "
        "used in training, clean.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--train", type=int, default=20000, help="training utterances")
    p.add_argument("--heldout", type=int, default=1000, help="held-out utterances")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)

    def run(args: argparse.Namespace) -> int:
        if args.train < 0 or args.heldout < 0:
            p.error("--train and --heldout must be non-negative")
        return synth_command(args.out, args.train, args.heldout, args.seed, args.workers)

    p.set_defaults(func=run)
    return p


# stage 2's count flags (--NAME N) and switches (--no-NAME), each a DemoConfig field
_DEMO_COUNT_FLAGS = {
    "chat_repeats": "chat utterances this many times per epoch of stage 2",
    "main_repeats": "the main training set this many times per epoch of stage 2",
    "text_chat_repeats": "every training chat dialogue as text, this many times per epoch",
    "text_chat_draws": "stage 2 also trains on N text chat items drawn as spoken chat is",
    "extra_chat": "stage 2 also trains on N more spoken chat dialogues (synthesised once)",
    "openings": "stage 2 also trains the assistant speaking first (a greeting), N times per epoch",
    "greeted_chat": "stage 2 also trains N spoken and N text chat items asked after that greeting",
    "client_openings": "stage 2 also trains N openings with instructions or a context message",
    "multi_sentence": "stage 2 also trains on N spoken items of 2-3 sentences (asr, ast)",
    "llm_layers": "stage 2's LLM has N layers: the starting weights' and new ones between",
}
_DEMO_SWITCHES = {
    "chat_transcripts": "do not also train the chat questions' audio as asr items",
    "extra_chat_transcripts": "train only the main set's chat questions as asr items",
}


def _demo_parser() -> argparse.ArgumentParser:
    from mooer.train.demo import STAGES, DemoConfig, demo_command, field_flag

    defaults = DemoConfig()
    p = argparse.ArgumentParser(prog="mooer train demo", description=demo_command.__doc__)
    p.add_argument("--out", default=defaults.out_dir, help="work folder (resumable)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--train", type=int, default=defaults.n_train, help="train utterances")
    p.add_argument("--heldout", type=int, default=defaults.n_heldout)
    p.add_argument("--ctc-steps", type=int, default=defaults.ctc_steps)
    p.add_argument("--llm-steps", type=int, default=defaults.llm_steps)
    p.add_argument("--llm-lr", type=float, default=defaults.llm_lr)
    for name, help_text in _DEMO_COUNT_FLAGS.items():
        p.add_argument(
            field_flag(name), type=int, default=getattr(defaults, name), metavar="N",
            help=help_text,
        )  # fmt: skip
    for name, help_text in _DEMO_SWITCHES.items():
        flag = "--no-" + name.replace("_", "-")
        p.add_argument(flag, dest=name, action="store_false", help=help_text)
    p.add_argument(
        "--new-layers-only", action="store_true", help="stage 2 trains only --llm-layers' new ones"
    )
    p.add_argument(
        "--sentence-marks", action="store_true",
        help="--multi-sentence targets end each sentence but the last with its full stop",
    )  # fmt: skip
    p.add_argument(
        "--sentences-alone", action="store_true",
        help="the sentences of the --multi-sentence items are also trained one by one",
    )  # fmt: skip
    p.add_argument("--llm-leg", default=defaults.llm_leg, help="stage 2's folder name")
    p.add_argument(
        "--llm-init", default=defaults.llm_init, metavar="FINAL_PT", help="start stage 2 here"
    )
    p.add_argument(
        "--average", nargs="+", default=[], metavar="FINAL_PT", help="stage 2: average these legs"
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--workers", type=int, default=defaults.workers)
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--install", type=Path, help="copy the exported model here at the end")
    p.add_argument(
        "--write-examples", type=Path, metavar="DIR", help="only speak the example wavs into DIR"
    )

    def run(args: argparse.Namespace) -> int:
        cfg = dataclasses.replace(
            defaults,
            out_dir=args.out,
            n_train=args.train,
            n_heldout=args.heldout,
            ctc_steps=args.ctc_steps,
            llm_steps=args.llm_steps,
            llm_lr=args.llm_lr,
            **{name: getattr(args, name) for name in (*_DEMO_COUNT_FLAGS, *_DEMO_SWITCHES)},
            new_layers_only=args.new_layers_only,
            sentence_marks=args.sentence_marks,
            sentences_alone=args.sentences_alone,
            llm_leg=args.llm_leg,
            llm_init=args.llm_init,
            llm_average=tuple(args.average),
            seed=args.seed,
            workers=args.workers,
            threads=args.threads,
        )
        return demo_command(cfg, args.stages, args.install, args.write_examples)

    p.set_defaults(func=run)
    return p


def _eval_parser() -> argparse.ArgumentParser:
    from mooer.train.evaluate import eval_command

    p = argparse.ArgumentParser(prog="mooer eval", description=eval_command.__doc__)
    p.add_argument("testset", help="a jsonl manifest (id, audio, task, text, ...)")
    _add_model_args(p)
    add_quantize_arg(p)
    p.add_argument("--out", type=Path, help="folder for hyps.jsonl and summary.{json,txt}")
    p.add_argument("--batch-size", type=int, default=argparse.SUPPRESS)
    p.add_argument("--beams", type=int, default=argparse.SUPPRESS)
    p.add_argument("--tasks", nargs="+", help="score only these tasks")
    p.add_argument("--limit", type=int, help="score only the first N utterances")
    p.set_defaults(func=lambda args: eval_command(**_keywords(args)))
    return p


def _pseudo_label_parser() -> argparse.ArgumentParser:
    from mooer.train.pseudo_label import TRANSLATE_MODES, pseudo_label_command

    p = argparse.ArgumentParser(prog="mooer pseudo-label", description=pseudo_label_command.__doc__)
    p.add_argument("inputs", nargs="+", help="audio files, wav.scp or jsonl lists")
    p.add_argument("--out", required=True, type=Path, help="the manifest to write (.jsonl)")
    _add_model_args(p)
    add_quantize_arg(p)
    p.add_argument(
        "--translate",
        choices=TRANSLATE_MODES,
        help="add ast entries for Mandarin: from the transcript (text) or the audio (speech)",
    )
    p.add_argument("--batch-size", type=int, default=argparse.SUPPRESS)
    p.set_defaults(func=lambda args: pseudo_label_command(**_keywords(args)))
    return p


def _keywords(args: argparse.Namespace) -> dict:
    """A command's arguments as the keywords of its entry point (every flag is named for one;
    a flag left out whose default is ``SUPPRESS`` takes the entry point's default)."""
    return {name: value for name, value in vars(args).items() if name != "func"}


# Commands with a parser of their own, built only when they run: their flags' defaults and
# choices come from the training modules, which import torch (``mooer --help`` does not wait).
# ``mooer train`` also takes a sub-command (synth, demo) before falling back to CONFIG.
SEPARATE: dict[str, tuple[str, Callable[[], argparse.ArgumentParser]]] = {
    "train": ("train from a YAML config (also: train synth, train demo)", _train_parser),
    "train synth": ("synthesise the template speech corpus", _synth_parser),
    "train demo": ("rebuild the bundled demo model", _demo_parser),
    "eval": ("decode a test set: CER, WER, BLEU, chat accuracy, RTF", _eval_parser),
    "pseudo-label": ("label audio with a model into a training manifest", _pseudo_label_parser),
}


def _separate(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, list[str]] | None:
    """The parser of a ``SEPARATE`` command that ``argv`` starts with, and the rest of argv."""
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in SEPARATE:
            return SEPARATE[name][1](), list(argv[words:])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        separate = _separate(argv)  # imports the training modules it parses for
        if separate is not None:
            parser, argv = separate
        else:
            parser = build_parser()
        args = parser.parse_args(argv)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except MooerError as exc:
        print(f"mooer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
