#!/usr/bin/env bash
# Set-up, idempotent: .venv with the pinned stack (constraints.txt) and birq_fairseq
# installed in development mode, plus the TTS engines for the demo corpus.
#   bash scripts/setup.sh            (make setup)
# A rerun only checks what is there. The fairseq-fixed build (~4 min, from sdist)
# happens once per machine: pip caches the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt)

if ! .venv/bin/python -c "import birq_fairseq, fairseq, torchaudio, flashlight.lib.text, hydra_plugins.hydra_submitit_launcher, sklearn, onnx, onnxruntime, tensorboardX" >/dev/null 2>&1; then
  echo "== installing torch and fairseq's build requirements"
  # fairseq-fixed builds its extensions against the installed torch: build without
  # isolation, or pip would fetch another torch into a throw-away build environment.
  "${PIP[@]}" torch torchaudio numpy cython setuptools wheel
  echo "== installing birq_fairseq and its pinned dependencies (first time: builds fairseq-fixed)"
  "${PIP[@]}" --no-build-isolation -e ".[test,export]"
fi
.venv/bin/python -c "import birq_fairseq, fairseq, torch, torchaudio; print(f'== python stack ok: torch {torch.__version__}, torchaudio {torchaudio.__version__}, fairseq {fairseq.__version__}')" 2>/dev/null

if [ "${BIRQ_SKIP_TTS:-0}" != 1 ]; then
  bash scripts/install_tts.sh
fi
