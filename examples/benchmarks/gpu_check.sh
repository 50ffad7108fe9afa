#!/usr/bin/env bash
# GPU check (issue #10): on a machine with one CUDA GPU, in <= 8 minutes, fp16 and bf16
# pretraining of BiRQ and BEST-RQ at base size through fairseq-hydra-train, a resume, and the
# BiRQ/BEST-RQ step and memory ratios and audio seconds per second; one JSON.
#
#   bash examples/benchmarks/make_gpu_wheelhouse.sh          # here, once: gpu_wheelhouse/ (~28 MiB)
#   bash examples/benchmarks/gpu_check.sh [--out FILE]       # there (needs torch + torchaudio with CUDA)
#   bash examples/benchmarks/gpu_check.sh --cpu --out F.json # dry run of the same logic, tiny model, CPU
#
# Without fairseq importable, it installs the pinned fairseq-fixed and its pure-Python
# dependencies from the wheelhouse without a network into a virtual environment that sees the
# machine's own torch (--system-site-packages): fairseq's C/Cython extensions are built there
# from the source archive against that torch (2-4 min the first time; CUDA_HOME is unset so no
# CUDA kernels of fairseq's unrelated models get compiled). Options other than those below go
# to gpu_check.py (see its --help). Environment: PYTHON (default python3),
# GPU_WHEELHOUSE (default gpu_wheelhouse), GPU_VENV (default /tmp/birq_gpu_venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
WHEELHOUSE=${GPU_WHEELHOUSE:-gpu_wheelhouse}
VENV=${GPU_VENV:-/tmp/birq_gpu_venv}
START=$(date +%s)

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # birq_fairseq from this tree, not installed
has_stack() { "$1" -c "import fairseq, hydra, soundfile, birq_fairseq" >/dev/null 2>&1; }

if ! has_stack "$PYTHON"; then
  if [ ! -x "$VENV/bin/python" ]; then
    # Without ensurepip in the base interpreter (a bare Debian python3), a venv without pip: the
    # machine's own pip then runs in it through the .pth file below.
    "$PYTHON" -m venv --system-site-packages "$VENV" 2>/dev/null || {
      rm -rf "$VENV"; "$PYTHON" -m venv --system-site-packages --without-pip "$VENV"; }
    # --system-site-packages sees the base interpreter's packages only. Where $PYTHON is itself a
    # virtual environment (the lent machines' python3 is /opt/torch/.venv's), its site-packages
    # (torch, numpy, cython, ...) go on the new one's path through a .pth file, after its own.
    "$PYTHON" -c "import site; print('\n'.join(site.getsitepackages()))" \
      >"$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_machine_site.pth"
  fi
  PYTHON="$VENV/bin/python"
  if ! has_stack "$PYTHON"; then
    if [ ! -d "$WHEELHOUSE" ]; then
      echo "gpu_check: fairseq is not importable and there is no wheelhouse at $WHEELHOUSE" >&2
      echo "  (make it on a machine with a network: bash examples/benchmarks/make_gpu_wheelhouse.sh)" >&2
      exit 2
    fi
    echo "== installing fairseq-fixed and its dependencies from $WHEELHOUSE (no network)"
    PIP=("$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$WHEELHOUSE")
    "$PYTHON" -c "import setuptools" || { echo "gpu_check: setuptools is missing (needed to build fairseq)" >&2; exit 2; }
    "${PIP[@]}" wheel  # the sdists below build with the machine's setuptools, not from an index
    PIP+=(--no-build-isolation)
    # Only what the machine's Python lacks: its own scipy, scikit-learn, regex, ... stay (the lent
    # machines' image has most of them), so the wheelhouse can leave them out (make_gpu_wheelhouse.sh).
    MISSING=()
    for pair in hydra-core:hydra omegaconf:omegaconf antlr4-python3-runtime:antlr4 bitarray:bitarray regex:regex \
                sacrebleu:sacrebleu packaging:packaging tqdm:tqdm soundfile:soundfile editdistance:editdistance \
                cffi:cffi scikit-learn:sklearn scipy:scipy; do
      "$PYTHON" -c "import ${pair#*:}" >/dev/null 2>&1 || MISSING+=("${pair%%:*}")
    done
    echo "== missing here: ${MISSING[*]:-nothing}"
    # Each pinned as constraints.txt pins it; no -c for the rest, so what the machine has stays.
    [ ${#MISSING[@]} -eq 0 ] || "${PIP[@]}" $(for p in "${MISSING[@]}"; do grep -i "^$p==" constraints.txt; done)
    env -u CUDA_HOME "${PIP[@]}" --no-deps "$(grep '^fairseq-fixed==' constraints.txt)"
    has_stack "$PYTHON" || { echo "gpu_check: import still fails:"; "$PYTHON" -c "import fairseq, birq_fairseq"; exit 1; }
    echo "== installed in $(( $(date +%s) - START )) s"
  fi
fi
exec "$PYTHON" examples/benchmarks/gpu_check.py --setup-seconds "$(( $(date +%s) - START ))" "$@"
