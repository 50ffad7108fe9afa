#!/usr/bin/env bash
# Install the text-to-speech engines and text sources used by
# manifests/build_corpus.py (the deterministic demo corpus).
#
# Idempotent: packages already installed are skipped; `apt-get update` runs at
# most once per invocation (and only if something needs installing).
# Needs root (or sudo) on Debian/Ubuntu.
#
# Packages (all in Debian bookworm "main"):
#   flite               voices kal, kal16, awb, rms, slt (built into the binary)
#   festival            + festvox-kallpc16k (kal_diphone), festvox-kdlpc16k
#                       (ked_diphone), festvox-us-slt-hts (cmu_us_slt_arctic_hts)
#   espeak-ng           English accents en-us, en-gb, en-gb-scotland, ... x variants
#   sox                 resampling, speed and pitch perturbation
#   wordnet-base        example sentences (text source)
#   fortunes            fortune cookies (text source)
#   bible-kjv-text      King James Bible verses (text source, compressed)
#   bible-kjv           the `bible` reader that decompresses the verses
# Not in Debian's archive (so not used): festvox-rablpc16k, festvox-us-awb-cg,
# festvox-us-rms-cg, MBROLA voices (non-free).
set -euo pipefail

PACKAGES=(
  flite
  festival
  festvox-kallpc16k
  festvox-kdlpc16k
  festvox-us-slt-hts
  espeak-ng
  sox
  wordnet-base
  fortunes
  bible-kjv-text
  bible-kjv
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install_tts.sh: must run as root (or with sudo available)" >&2
    exit 1
  fi
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    echo "install_tts.sh: $pkg already installed"
  else
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install_tts.sh: all TTS packages already installed"
else
  export DEBIAN_FRONTEND=noninteractive
  echo "install_tts.sh: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}"
fi

# Smoke test: every engine must be on PATH.
for exe in flite festival espeak-ng sox text2wave; do
  command -v "$exe" >/dev/null 2>&1 || { echo "install_tts.sh: $exe not found after install" >&2; exit 1; }
done
echo "install_tts.sh: flite voices: $(flite -lv 2>&1 | sed 's/^Voices available: //')"
echo "install_tts.sh: done"
