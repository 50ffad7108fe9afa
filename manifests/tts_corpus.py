"""Deterministic multi-speaker English demo corpus, synthesised on this machine.

Text comes from Debian text packages (WordNet example sentences, fortunes, the
King James Bible); speech from the Debian TTS engines flite, festival and
espeak-ng, perturbed in speed and pitch and resampled to 16 kHz mono 16-bit
WAV with sox. Everything is drawn from one ``seed``: the same seed gives
byte-identical manifests and labels (and identical audio given the same engine
versions). Install the engines with ``scripts/install_tts.sh``.

Demo tooling, not part of the plugin: the command line is ``manifests/build_corpus.py``.
Import it with ``manifests/`` on ``sys.path`` (``import tts_corpus``); it needs only
``birq_fairseq.data.labels`` (``_bootstrap.bare_package()`` makes that importable
without loading fairseq).

Output (fairseq wav2vec format)::

    wav/<split>/<voice>/<hash>.wav
    train.tsv                        unlabelled pretraining pool (seen voices)
    finetune.tsv .wrd .ltr           labelled subset (seen voices)
    valid.tsv .wrd .ltr              (seen voices)
    test_seen.tsv .wrd .ltr          (seen voices)
    test_unseen.tsv .wrd .ltr        held-out voices only
    dict.ltr.txt                     letters (finetune counts; A-Z, ' and | always present)
    metadata.tsv                     split, path, voice, speed, pitch, text per utterance
    corpus.json                      statistics

No sentence appears in two splits. Each wav's file name is a hash of its full
recipe (engine, voice, text, perturbation, engine versions), so a rerun reuses
every valid file already built and a changed recipe never reuses stale audio.
"""

from __future__ import annotations

import concurrent.futures
import functools
import glob
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from birq_fairseq.data.labels import (
    count_letters,
    dictionary_entries,
    normalize_transcript,
    words_to_letters,
    write_dictionary,
    write_labels,
    write_lines,
    write_manifest,
)

SAMPLE_RATE = 16000
SPLITS = ("train", "finetune", "valid", "test_seen", "test_unseen")
LABELLED_SPLITS = ("finetune", "valid", "test_seen", "test_unseen")
ALPHABET = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + ["'", "|"]

# utterance counts per split, and the longest sentence (in words) used
PRESETS: Dict[str, Dict[str, int]] = {
    "tiny": dict(train=4, finetune=3, valid=2, test_seen=2, test_unseen=2, max_words=7),
    "quick": dict(train=400, finetune=100, valid=30, test_seen=30, test_unseen=30, max_words=14),
    "default": dict(train=2000, finetune=300, valid=60, test_seen=100, test_unseen=100, max_words=14),
    "large": dict(train=8000, finetune=1000, valid=200, test_seen=300, test_unseen=300, max_words=14),
}
MIN_WORDS, MAX_WORDS = 4, 25

INSTALL_HINT = "run scripts/install_tts.sh (as root) to install all TTS engines and text sources"

# --------------------------------------------------------------------------
# Dependencies
# --------------------------------------------------------------------------

# (what is needed, how to check it, Debian package)
EXECUTABLES = {"flite": "flite", "text2wave": "festival", "festival": "festival", "espeak-ng": "espeak-ng",
               "sox": "sox", "bible": "bible-kjv"}
FESTIVAL_VOICE_DIRS = {
    "kal_diphone": ("/usr/share/festival/voices/english/kal_diphone", "festvox-kallpc16k"),
    "ked_diphone": ("/usr/share/festival/voices/english/ked_diphone", "festvox-kdlpc16k"),
    "cmu_us_slt_arctic_hts": ("/usr/share/festival/voices/us/cmu_us_slt_arctic_hts", "festvox-us-slt-hts"),
}
WORDNET_DIR = "/usr/share/wordnet"
FORTUNES_DIR = "/usr/share/games/fortunes"
BIBLE_DATA = "/usr/lib/bible.data"
TEXT_SOURCES = {
    "wordnet": (os.path.join(WORDNET_DIR, "data.noun"), "wordnet-base"),
    "fortunes": (os.path.join(FORTUNES_DIR, "fortunes"), "fortunes"),
    "kjv": (BIBLE_DATA, "bible-kjv-text"),
}
VERSION_PACKAGES = ("flite", "festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts",
                    "espeak-ng", "sox", "wordnet-base", "fortunes", "bible-kjv-text")
# the packages whose version changes the audio (part of each wav's recipe hash)
AUDIO_PACKAGES = VERSION_PACKAGES[:7]


class MissingDependencyError(RuntimeError):
    """A TTS engine, voice or text source is not installed."""


def missing_dependencies() -> List[Tuple[str, str]]:
    """``(what, debian_package)`` for every missing engine, voice or text source."""
    missing = []
    for exe, pkg in EXECUTABLES.items():
        if shutil.which(exe) is None:
            missing.append((f"executable '{exe}'", pkg))
    for voice, (path, pkg) in FESTIVAL_VOICE_DIRS.items():
        if not os.path.isdir(path):
            missing.append((f"festival voice '{voice}'", pkg))
    for name, (path, pkg) in TEXT_SOURCES.items():
        if not os.path.exists(path):
            missing.append((f"text source '{name}' ({path})", pkg))
    return missing


def require_dependencies() -> None:
    """Raise :class:`MissingDependencyError` naming the Debian packages to install."""
    missing = missing_dependencies()
    if missing:
        lines = [f"  {what}: install Debian package '{pkg}'" for what, pkg in missing]
        pkgs = " ".join(sorted({pkg for _, pkg in missing}))
        raise MissingDependencyError(
            "missing TTS dependencies:\n" + "\n".join(lines)
            + f"\n(apt-get install {pkgs}; or {INSTALL_HINT})"
        )


@functools.lru_cache(maxsize=1)
def _dpkg_versions() -> Tuple[Tuple[str, str], ...]:
    try:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Version}\n", *VERSION_PACKAGES],
                             capture_output=True, text=True)  # exits 1 if some are missing
        found = dict(line.split("\t", 1) for line in res.stdout.splitlines() if "\t" in line)
    except OSError:
        found = {}
    return tuple((pkg, found.get(pkg) or "unknown") for pkg in VERSION_PACKAGES)


def engine_versions() -> Dict[str, str]:
    """Installed Debian package versions of the engines, voices and text sources."""
    return dict(_dpkg_versions())


# --------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------

_ALLOWED_RAW = re.compile(r"^[A-Za-z ',.;:!?\"()-]+$")
_ACRONYM = re.compile(r"[A-Z]\S*[A-Z]")  # two capitals in one word
_NON_LETTER = re.compile(r"[^a-z' ]")
_EDGE_APOSTROPHES = re.compile(r"(?<![a-z])'+|'+(?![a-z])")
# a vowel-less word, a stray single letter (a, i allowed), an over-long word, a doubled apostrophe
_BAD_WORD = re.compile(r"(?:^| )(?:[^aeiouy ]+|[eouy]|\S{21,}|\S*''\S*)(?= |$)")


def clean_sentence(raw: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> Optional[str]:
    """Normalise one sentence to a-z, apostrophe and space, or ``None`` to reject it.

    Rejects anything a TTS engine would not read exactly as written: digits and
    symbols, acronyms (two or more capitals in a word), single letters other
    than "a"/"i", vowel-less words (abbreviations like "mr", "st"), and
    sentences outside ``[min_words, max_words]`` words. Apostrophes are kept
    inside words only.
    """
    raw = " ".join(raw.replace("\u2019", "'").split())
    if not raw or not _ALLOWED_RAW.match(raw) or _ACRONYM.search(raw):
        return None
    words = _EDGE_APOSTROPHES.sub(" ", _NON_LETTER.sub(" ", raw.lower())).split()
    if not min_words <= len(words) <= max_words:
        return None
    text = " ".join(words)
    return None if _BAD_WORD.search(text) else text


def _split_sentences(text: str, boundaries: str = ".!?") -> List[str]:
    return [s for s in re.split(r"(?<=[" + re.escape(boundaries) + r"])\s+", text) if s.strip()]


def wordnet_sentences() -> List[str]:
    """Quoted example sentences from WordNet's data files."""
    out = []
    for name in ("data.noun", "data.verb", "data.adj", "data.adv"):
        path = os.path.join(WORDNET_DIR, name)
        if os.path.exists(path):
            with open(path, encoding="latin-1") as f:
                out.extend(re.findall(r'"([^"]+)"', f.read()))
    return out


def fortune_sentences() -> List[str]:
    """Sentences from the fortune cookie files (attribution lines dropped)."""
    out = []
    for path in sorted(glob.glob(os.path.join(FORTUNES_DIR, "*"))):
        if path.endswith((".dat", ".u8")) or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            entries = re.split(r"^%\s*$", f.read(), flags=re.M)
        for entry in entries:
            lines = [ln for ln in entry.splitlines() if not ln.strip().startswith("--")]
            out.extend(_split_sentences(" ".join(lines)))
    return out


def kjv_sentences() -> List[str]:
    """Clauses of King James Bible verses (split at . ! ? ; :), via the `bible` reader."""
    res = subprocess.run(["bible", "-l", "100000", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, errors="replace")
    if res.returncode != 0:
        raise MissingDependencyError(f"`bible` failed ({res.stderr.strip()}); install bible-kjv; {INSTALL_HINT}")
    out = []
    for line in res.stdout.splitlines():
        m = re.match(r"^\s+\d+\s+(.*)$", line)
        if m:
            out.extend(_split_sentences(m.group(1), ".!?;:"))
    return out


TEXT_SOURCE_READERS = OrderedDict([("wordnet", wordnet_sentences), ("fortunes", fortune_sentences),
                                   ("kjv", kjv_sentences)])


@functools.lru_cache(maxsize=8)
def cleaned_source(name: str, min_words: int, max_words: int) -> Tuple[str, ...]:
    """Sorted distinct cleaned sentences of one text source (cached per process)."""
    raw = TEXT_SOURCE_READERS[name]()
    return tuple(sorted({c for c in (clean_sentence(s, min_words, max_words) for s in raw) if c}))


def sentence_pool(seed: int, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> Tuple[List[str], Dict[str, int]]:
    """Distinct cleaned sentences from all text sources in a seeded order.

    Each source is deduplicated, sorted, shuffled with ``seed``, then the
    sources are interleaved round-robin (dropping cross-source duplicates), so
    every split mixes all sources. Returns the pool and the per-source counts.
    """
    lists, counts = [], {}
    for name in TEXT_SOURCE_READERS:
        cleaned = list(cleaned_source(name, min_words, max_words))
        random.Random(f"{seed}-text-{name}").shuffle(cleaned)
        lists.append(cleaned)
        counts[name] = len(cleaned)
    pool, seen = [], set()
    for i in range(max(len(lst) for lst in lists)):
        for lst in lists:
            if i < len(lst) and lst[i] not in seen:
                seen.add(lst[i])
                pool.append(lst[i])
    return pool, counts


# --------------------------------------------------------------------------
# Voices
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    engine: str  # flite | festival | espeak
    name: str  # engine specific voice name

    @property
    def id(self) -> str:
        return f"{self.engine}-{self.name.replace('+', '-')}"


FLITE_VOICES = ("kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
# "en" is British English: espeak-ng 1.51 ignores a "+variant" after "en-gb" (all variants
# sound the same), so the British voice is addressed as "en". tests/test_corpus.py checks
# that every accent+variant gives distinct audio.
ESPEAK_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                  "en-us-nyc", "en-029")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
# Engines are drawn with these weights, then a voice uniformly within the engine.
ENGINE_WEIGHTS = OrderedDict([("flite", 0.35), ("festival", 0.25), ("espeak", 0.40)])


def all_voices() -> List[Voice]:
    voices = [Voice("flite", v) for v in FLITE_VOICES] + [Voice("festival", v) for v in FESTIVAL_VOICES]
    voices += [Voice("espeak", f"{a}+{v}") for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS]
    return voices


def is_unseen(voice: Voice) -> bool:
    """Voices held out for ``test_unseen`` (never used in any other split)."""
    if voice.engine == "flite":
        return voice.name == "rms"
    if voice.engine == "festival":
        return voice.name == "ked_diphone"
    accent, variant = voice.name.split("+")
    return accent == "en-029" or variant in ("m6", "f4")


def voices_by_engine(unseen: bool) -> Dict[str, List[Voice]]:
    out: Dict[str, List[Voice]] = OrderedDict((e, []) for e in ENGINE_WEIGHTS)
    for v in all_voices():
        if is_unseen(v) == unseen:
            out[v.engine].append(v)
    return out


# --------------------------------------------------------------------------
# Utterance plans and synthesis
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    split: str
    index: int
    text: str  # a-z ' space
    voice: Voice
    speed: float  # sox speed factor (tempo and pitch)
    pitch: int  # additional pitch shift in cents

    def recipe_hash(self, versions: Dict[str, str]) -> str:
        audio_versions = sorted((k, v) for k, v in versions.items() if k in AUDIO_PACKAGES)
        key = json.dumps([self.text, self.voice.engine, self.voice.name, self.speed, self.pitch, SAMPLE_RATE,
                          audio_versions], sort_keys=True)
        return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]

    def relpath(self, versions: Dict[str, str]) -> str:
        return f"wav/{self.split}/{self.voice.id}/{self.recipe_hash(versions)}.wav"


def plan_utterances(seed: int, counts: Dict[str, int], pool: Sequence[str]) -> List[Utterance]:
    """Assign distinct sentences, voices and perturbations to every utterance.

    Sentences are sliced from ``pool`` split by split (so no sentence is in two
    splits); each utterance's voice, speed and pitch come from its own
    ``Random(f"{seed}-{split}-{index}")``.
    """
    needed = sum(counts[s] for s in SPLITS)
    if needed > len(pool):
        raise ValueError(f"{needed} utterances requested but only {len(pool)} distinct sentences available")
    plan, start = [], 0
    seen_voices, unseen_voices = voices_by_engine(False), voices_by_engine(True)
    for split in ("test_unseen", "test_seen", "valid", "finetune", "train"):
        voices = unseen_voices if split == "test_unseen" else seen_voices
        engines = [e for e in ENGINE_WEIGHTS if voices[e]]
        weights = [ENGINE_WEIGHTS[e] for e in engines]
        for i in range(counts[split]):
            rng = random.Random(f"{seed}-{split}-{i}")
            engine = rng.choices(engines, weights)[0]
            voice = rng.choice(voices[engine])
            speed = round(rng.uniform(0.9, 1.1), 2)
            pitch = int(round(rng.uniform(-200, 200), -1))
            plan.append(Utterance(split, i, pool[start + i], voice, speed, pitch))
        start += counts[split]
    order = {s: k for k, s in enumerate(SPLITS)}
    return sorted(plan, key=lambda u: (order[u.split], u.index))


def _run(cmd: List[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {res.returncode}): {' '.join(cmd)}\n{res.stderr.strip()}")


def synthesize_raw(voice: Voice, text: str, out_wav: str, workdir: str) -> None:
    """Synthesise ``text`` with ``voice`` to ``out_wav`` (engine's native format)."""
    if voice.engine == "flite":
        _run(["flite", "-voice", voice.name, "-t", text, "-o", out_wav], f"flite ({voice.name})")
    elif voice.engine == "festival":
        txt = os.path.join(workdir, "text.txt")
        with open(txt, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        _run(["text2wave", "-eval", f"(voice_{voice.name})", txt, "-o", out_wav], f"festival ({voice.name})")
    elif voice.engine == "espeak":
        _run(["espeak-ng", "-v", voice.name, "-w", out_wav, text], f"espeak-ng ({voice.name})")
    else:
        raise ValueError(f"unknown engine {voice.engine!r}")


def perturb_and_resample(in_wav: str, out_wav: str, speed: float, pitch: int) -> None:
    """sox: mono, speed, pitch, 16 kHz, peak-normalise to -1 dBFS, 16-bit, no dither."""
    effects = ["remix", "-", "speed", f"{speed:.2f}"]
    if pitch:
        effects += ["pitch", str(pitch)]
    effects += ["rate", "-v", str(SAMPLE_RATE), "norm", "-1"]
    _run(["sox", "-R", "-D", "-q", in_wav, "-t", "wav", "-e", "signed-integer", "-b", "16", "-c", "1",
          "-r", str(SAMPLE_RATE), out_wav] + effects, "sox")


def valid_wav(path: str) -> Optional[int]:
    """Number of samples if ``path`` is a 16 kHz mono 16-bit non-empty WAV, else ``None``."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception:
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames <= 0 or info.subtype != "PCM_16":
        return None
    return info.frames


def build_wav(utt: Utterance, path: str) -> Tuple[int, bool]:
    """Build one wav atomically unless a valid one exists; return ``(samples, built)``."""
    frames = valid_wav(path) if os.path.exists(path) else None
    if frames is not None:
        return frames, False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tts-") as work:
        raw = os.path.join(work, "raw.wav")
        synthesize_raw(utt.voice, utt.text, raw, work)
        tmp = f"{path}.tmp-{os.getpid()}-{utt.split}-{utt.index}"
        try:
            perturb_and_resample(raw, tmp, utt.speed, utt.pitch)
            frames = valid_wav(tmp)
            if frames is None:
                raise RuntimeError(f"synthesised audio for {utt.voice.id} {utt.text!r} is invalid or empty")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return frames, True


# --------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------


def resolve_counts(size: str = "quick", overrides: Optional[Dict[str, Optional[int]]] = None) -> Dict[str, int]:
    """Per-split counts (and ``max_words``) of a preset with explicit overrides."""
    if size not in PRESETS:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(PRESETS)}")
    counts = dict(PRESETS[size])
    for k, v in (overrides or {}).items():
        if v is not None:
            if v < 0:
                raise ValueError(f"{k} must be >= 0, got {v}")
            counts[k] = v
    return counts


def build_corpus(
    out_dir: str,
    seed: int = 1,
    size: str = "quick",
    overrides: Optional[Dict[str, Optional[int]]] = None,
    jobs: Optional[int] = None,
    progress: bool = True,
    log=print,
) -> Dict[str, object]:
    """Build (or complete) the corpus in ``out_dir``; return the ``corpus.json`` statistics."""
    require_dependencies()
    counts = resolve_counts(size, overrides)
    max_words = max(MIN_WORDS, min(MAX_WORDS, counts.pop("max_words")))
    jobs = jobs or os.cpu_count() or 1
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, "wav", "**", "*.tmp-*"), recursive=True):
        os.remove(stale)  # left by an interrupted build

    t0 = time.time()
    pool, source_counts = sentence_pool(seed, MIN_WORDS, max_words)
    plan = plan_utterances(seed, counts, pool)
    versions = engine_versions()
    log(f"build_corpus: {len(pool)} candidate sentences ({source_counts}); {len(plan)} utterances, {jobs} jobs")

    frames: Dict[Tuple[str, int], int] = {}
    built = 0
    t1 = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
        futures = {ex.submit(build_wav, u, os.path.join(out_dir, u.relpath(versions))): u for u in plan}
        bar = _progress(len(plan), progress)
        try:
            for fut in concurrent.futures.as_completed(futures):
                u = futures[fut]
                n, was_built = fut.result()
                frames[(u.split, u.index)] = n
                built += was_built
                bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            bar.close()
    synth_seconds = time.time() - t1

    stats = write_outputs(out_dir, seed, size, counts, max_words, plan, frames, versions, source_counts, len(pool))
    log(f"build_corpus: synthesised {built} new, reused {len(plan) - built} in {synth_seconds:.1f} s "
        f"({synth_seconds / max(built, 1):.3f} s per new utterance); total {time.time() - t0:.1f} s; "
        f"{stats['total_hours']:.3f} h of audio in {out_dir}")
    return stats


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        enabled = False
    if not enabled:
        class _Null:
            def update(self, n):
                pass

            def close(self):
                pass
        return _Null()
    return tqdm(total=total, desc="synthesising", unit="utt")


def write_outputs(out_dir, seed, size, counts, max_words, plan, frames, versions, source_counts, pool_size):
    """Write manifests, labels, dict.ltr.txt, metadata.tsv and corpus.json."""
    by_split: Dict[str, List[Utterance]] = OrderedDict((s, []) for s in SPLITS)
    for u in plan:
        by_split[u.split].append(u)
    meta = ["split\tpath\tvoice\tspeed\tpitch_cents\ttext"]
    split_stats = OrderedDict()
    for split, utts in by_split.items():
        entries = [(u.relpath(versions), frames[(u.split, u.index)]) for u in utts]
        write_manifest(os.path.join(out_dir, f"{split}.tsv"), out_dir, entries)
        if split in LABELLED_SPLITS:
            write_labels(out_dir, split, [normalize_transcript(u.text) for u in utts])
        for u, (rel, _) in zip(utts, entries):
            meta.append(f"{split}\t{rel}\t{u.voice.id}\t{u.speed:.2f}\t{u.pitch}\t{u.text}")
        secs = [n / SAMPLE_RATE for _, n in entries]
        split_stats[split] = OrderedDict([
            ("utterances", len(utts)),
            ("hours", round(sum(secs) / 3600, 4)),
            ("mean_seconds", round(sum(secs) / len(secs), 3) if secs else 0.0),
            ("min_seconds", round(min(secs), 3) if secs else 0.0),
            ("max_seconds", round(max(secs), 3) if secs else 0.0),
            ("labelled", split in LABELLED_SPLITS),
            ("voices", OrderedDict(sorted(Counter(u.voice.id for u in utts).items()))),
        ])
    write_lines(os.path.join(out_dir, "metadata.tsv"), meta)

    ft_letters = count_letters(words_to_letters(normalize_transcript(u.text)) for u in by_split["finetune"])
    all_letters = set(count_letters(words_to_letters(normalize_transcript(u.text)) for u in plan))
    write_dictionary(os.path.join(out_dir, "dict.ltr.txt"), dictionary_entries(ft_letters, sorted(all_letters) + ALPHABET))

    seen = sorted({v.id for v in all_voices() if not is_unseen(v)})
    unseen = sorted({v.id for v in all_voices() if is_unseen(v)})
    stats = OrderedDict([
        ("seed", seed),
        ("size", size),
        ("counts", OrderedDict((s, counts[s]) for s in SPLITS)),
        ("max_words", max_words),
        ("sample_rate", SAMPLE_RATE),
        ("total_utterances", len(plan)),
        ("total_hours", round(sum(st["hours"] for st in split_stats.values()), 4)),
        ("splits", split_stats),
        ("seen_voices", seen),
        ("unseen_voices", unseen),
        ("text_sources", source_counts),
        ("candidate_sentences", pool_size),
        ("engine_versions", versions),
    ])
    tmp = os.path.join(out_dir, "corpus.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(out_dir, "corpus.json"))
    return stats
