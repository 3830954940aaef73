"""File transcription and translation over HTTP with the openai SDK against `mooer serve`.

python examples/transcribe_http.py speech.wav [--server http://127.0.0.1:8000] [--format srt]
"""

from __future__ import annotations

import argparse

from openai import OpenAI

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio")
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--format", default="json", choices=["json", "text", "verbose_json", "srt", "vtt"]
    )
    parser.add_argument("--api-key", default="unused")
    args = parser.parse_args()

    client = OpenAI(base_url=f"{args.server}/v1", api_key=args.api_key)
    with open(args.audio, "rb") as f:
        result = client.audio.transcriptions.create(
            model="mooer", file=f, response_format=args.format
        )
    print(result if isinstance(result, str) else result.text)
    with open(args.audio, "rb") as f:
        english = client.audio.translations.create(model="mooer", file=f)
    print("English:", english.text)
