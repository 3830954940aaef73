#!/usr/bin/env bash
# One-step set-up on a fresh machine: the CPU torch wheel, then mooer with every extra.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[dev]'
# funasr (a test-only reference) pulls a torchaudio wheel that cannot load beside this torch and
# breaks `import transformers`; mooer never uses torchaudio.
python3 -m pip uninstall -q -y torchaudio 2>/dev/null || true
