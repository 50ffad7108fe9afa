#!/usr/bin/env bash
# The files gpu_check.sh installs fairseq from on a machine without a network.
#   bash examples/benchmarks/make_gpu_wheelhouse.sh [DIR]      (default: gpu_wheelhouse/, gitignored)
#   GPU_PYTHON_VERSION=3.11 bash ...   binary wheels for another CPython (default 3.12, the GPU machines')
#
# The accelerator machines have Python 3.12, torch + torchaudio with CUDA, cython and numpy,
# but no fairseq and no network. What `import fairseq, birq_fairseq` needs beyond that:
# - fairseq-fixed as its source archive: the wheel built here is cp311 with C extensions;
#   gpu_check.sh builds the sdist there against that machine's torch (--no-build-isolation);
# - antlr4-python3-runtime 4.9.3 (hydra's parser; published as an sdist only, pure Python);
# - wheel, to build those two sdists there without an index (with the machine's setuptools);
# - pure-Python wheels (hydra-core, omegaconf, packaging, tqdm, sacrebleu's, joblib, ...) and, for
#   one CPython version, the binary wheels of bitarray, regex, PyYAML, lxml, cffi, editdistance,
#   scipy and scikit-learn (soundfile's wheel bundles libsndfile). `import fairseq` imports all of
#   them: its task/criterion registries load audio_classification (sklearn) and
#   sentence_prediction (scipy), its scorers sacrebleu (lxml).
# Versions are constraints.txt's. About 63 MiB (the device tool carries <= 64 MiB): one Python
# version only.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-gpu_wheelhouse}
mkdir -p "$OUT"
pin() { grep -i "^$1==" constraints.txt; }
DL=(.venv/bin/pip download --quiet --disable-pip-version-check --no-deps -d "$OUT")

# --no-build-isolation: preparing the sdist's metadata imports torch; use this venv's.
"${DL[@]}" --no-build-isolation --no-binary :all: "$(pin fairseq-fixed)" "$(pin antlr4-python3-runtime)"
PY=${GPU_PYTHON_VERSION:-3.12}
PURE=(hydra-core omegaconf packaging tqdm sacrebleu portalocker tabulate colorama pycparser soundfile
      joblib threadpoolctl narwhals cloudpickle)
BINARY=(bitarray regex PyYAML lxml cffi editdistance scipy scikit-learn)
# Packages the target machine already has (gpu_check.sh installs only what is missing there). The
# lent H200 image has these (the device tool's KINDS.md), and the device tool carries <= 64 MiB with
# the working tree: leaving scipy, scikit-learn and lxml out takes the wheelhouse from ~63 to ~14 MiB.
# GPU_MACHINE_HAS="" for a machine with none of them.
HAS=" ${GPU_MACHINE_HAS-scipy scikit-learn lxml regex PyYAML sacrebleu portalocker tabulate colorama joblib threadpoolctl narwhals cloudpickle packaging tqdm} "
keep() { local p; for p in "$@"; do [[ "$HAS" == *" $p "* ]] || echo "$p"; done; }
PURE=($(keep "${PURE[@]}"))
BINARY=($(keep "${BINARY[@]}"))
"${DL[@]}" --only-binary :all: $(for p in "${PURE[@]}"; do pin "$p"; done)
# `wheel`, which setuptools < 70.1 needs to build the sdists there (--no-build-isolation);
# setuptools itself is on those machines (torch requires it on Python >= 3.12).
"${DL[@]}" --only-binary :all: "wheel==$(.venv/bin/python -c 'from importlib.metadata import version; print(version("wheel"))')"
"${DL[@]}" --only-binary :all: --implementation cp --python-version "$PY" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 $(for p in "${BINARY[@]}"; do pin "$p"; done)
du -sh "$OUT"
ls "$OUT"
