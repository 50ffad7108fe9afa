"""Phoneme labels from transcripts with espeak-ng, for phoneme recognition (PER).

Pure python + the ``espeak-ng`` program (the TTS corpus builder installs it); no fairseq
import, so ``manifests/make_labels.py --phonemes`` can use it standalone.

How the phoneme set is normalised (one ``<split>.phn`` line per transcript, phonemes
separated by spaces, no word boundaries):

1. the normalised word transcript (``A-Z'`` and spaces, see :func:`normalize_transcript`) is
   lower-cased: espeak-ng spells all-capital words as letters (``US`` -> ``j uː ɛ s``);
2. ``espeak-ng -q --ipa --sep=_ -v en-us`` phonemises it: the IPA of
   ``espeak-ng -q --ipa -v en-us``, with espeak's own phoneme segmentation made explicit by
   ``_``. A phoneme is one espeak phoneme, so affricates, diphthongs, long and r-coloured
   vowels stay single symbols (``tʃ``, ``aɪ``, ``uː``, ``ɑːɹ``), as espeak defines them;
3. stress marks (primary ``ˈ`` and secondary ``ˌ``) are removed, as are tie bars and
   zero-width joiners (``--ipa`` variants print them inside affricates and diphthongs) and
   language-switch tags such as ``(fr)``; length marks (``ː``) stay part of their vowel;
4. word boundaries are dropped: PER is scored on the phoneme sequence alone (as SUPERB's PR).

The phoneme dictionary (``dict.phn.txt``, fairseq ``SYMBOL COUNT`` format) holds the symbols
of the split it was made from; test splits may hold phonemes it lacks (scored as errors).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import List, Sequence

ESPEAK = "espeak-ng"
ESPEAK_VOICE = "en-us"
PHONEME_SEPARATOR = "_"
STRESS_MARKS = "ˈˌ"
# combining double inverted breve / double breve below (tie bars), zero-width (non-)joiners
_REMOVED = re.compile("[\u0361\u035c\u200c\u200d" + STRESS_MARKS + "]")
_LANGUAGE_SWITCH = re.compile(r"\([a-z-]+\)")


class PhonemeError(ValueError):
    """A transcript espeak-ng gives no phonemes for; ``index`` is its 0-based position."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def normalize_phonemes(ipa: str) -> List[str]:
    """One line of ``espeak-ng --ipa --sep=_`` output -> the list of normalised phonemes.

    ``"h_ˈɛ_l_oʊ w_ˈɜː_l_d"`` -> ``["h", "ɛ", "l", "oʊ", "w", "ɜː", "l", "d"]``.
    """
    ipa = _REMOVED.sub("", _LANGUAGE_SWITCH.sub(" ", ipa))
    return [p for word in ipa.split() for p in word.split(PHONEME_SEPARATOR) if p]


def espeak_command(voice: str = ESPEAK_VOICE) -> List[str]:
    """The espeak-ng command line; raises ValueError when espeak-ng is not installed."""
    exe = shutil.which(ESPEAK)
    if exe is None:
        raise ValueError(f"{ESPEAK} not found on PATH: phoneme labels need it "
                         "(apt-get install espeak-ng; `make corpus` installs it too)")
    return [exe, "-q", "--ipa", f"--sep={PHONEME_SEPARATOR}", "-v", voice]


def _espeak(cmd: List[str], text: str) -> List[str]:
    proc = subprocess.run(cmd, input=text, capture_output=True, text=True, encoding="utf-8")
    if proc.returncode != 0:
        raise ValueError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[:300]}")
    return [line for line in proc.stdout.split("\n") if line.strip()]


def phonemize(transcripts: Sequence[str], voice: str = ESPEAK_VOICE) -> List[List[str]]:
    """Normalised phonemes of each word transcript (see the module docstring), in order.

    All lines go to one espeak-ng process (it reads standard input line by line); should
    its output not be one line per input line (espeak splits very long clauses), each
    transcript is phonemised on its own. Raises :class:`PhonemeError` for a transcript
    without phonemes, ValueError when espeak-ng is missing or fails.
    """
    cmd = espeak_command(voice)
    texts = [" ".join(t.lower().split()) for t in transcripts]
    if not texts:
        return []
    lines = _espeak(cmd, "\n".join(texts) + "\n") if all(texts) else []
    if len(lines) != len(texts):  # one process per transcript: slower, unambiguous
        lines = [" ".join(_espeak(cmd, t + "\n")) if t else "" for t in texts]
    phonemes = [normalize_phonemes(line) for line in lines]
    for i, (text, phones) in enumerate(zip(texts, phonemes)):
        if not phones:
            raise PhonemeError(f"no phonemes for {text!r} from {' '.join(cmd)}", i)
    return phonemes
