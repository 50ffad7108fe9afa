"""Manifest and label tooling in fairseq's wav2vec format.

Pure python (+ ``soundfile`` for reading audio headers); no fairseq import, so it
can be used by the command line tools in ``manifests/`` and by tests without
fairseq installed.

Formats (identical to fairseq's ``examples/wav2vec/wav2vec_manifest.py`` and
``examples/wav2vec/libri_labels.py``):

* manifest ``<split>.tsv``: first line is the absolute audio root, then one
  ``relative/path<TAB>num_samples`` line per utterance;
* ``<split>.wrd``: one upper-case transcript per manifest entry;
* ``<split>.ltr``: the same transcript as space separated letters with ``|``
  as the word boundary, each line ending in `` |`` (``H E L L O | W O R L D |``);
* ``dict.ltr.txt``: fairseq ``Dictionary`` format, ``SYMBOL COUNT`` per line.

Every validation error is a ``ValueError`` whose message starts with
``"{file}:{lineno}: "`` naming the offending file and (1-based) line.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import soundfile as sf

from .phonemes import PhonemeError, phonemize

PathLike = Union[str, os.PathLike]

WORD_BOUNDARY = "|"
DEFAULT_EXTENSIONS = ("wav", "flac")
DEFAULT_SAMPLE_RATE = 16000

_NOT_ALLOWED = re.compile(r"[^A-Z' ]")
_WHITESPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------
# Text normalisation and label formatting
# --------------------------------------------------------------------------


def normalize_transcript(text: str) -> str:
    """Upper-case ``text``, keep only A-Z, apostrophe and space, collapse whitespace.

    Any other character (punctuation, digits, hyphens, tabs) becomes a space, so
    ``"well-known, isn't it?"`` gives ``"WELL KNOWN ISN'T IT"``. Words made only
    of apostrophes are dropped. May return ``""``: callers decide if that is an
    error.
    """
    text = _NOT_ALLOWED.sub(" ", text.upper().replace("\t", " "))
    words = [w for w in text.split(" ") if w.strip("'")]
    return " ".join(words)


def words_to_letters(words: str) -> str:
    """Letter label for a normalised word transcript, exactly as libri_labels.py.

    ``"HELLO WORLD"`` -> ``"H E L L O | W O R L D |"``.
    """
    return " ".join(list(words.replace(" ", WORD_BOUNDARY))) + " " + WORD_BOUNDARY


def letters_to_words(letters: str) -> str:
    """Inverse of :func:`words_to_letters` (``"H I | Y O U |"`` -> ``"HI YOU"``)."""
    return _WHITESPACE.sub(" ", letters.replace(" ", "").replace(WORD_BOUNDARY, " ")).strip()


# --------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------


@dataclass
class Manifest:
    """A parsed manifest: audio ``root`` and ``(relative_path, num_samples)`` entries."""

    root: str
    entries: List[Tuple[str, int]] = field(default_factory=list)
    path: Optional[str] = None

    def __len__(self) -> int:
        return len(self.entries)

    def entry_lineno(self, index: int) -> int:
        """1-based line number in the .tsv of entry ``index`` (line 1 is the root)."""
        return index + 2


def read_manifest(path: PathLike) -> Manifest:
    """Read a fairseq manifest, checking its format line by line."""
    path = str(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}:1: manifest must start with the audio root directory")
    manifest = Manifest(root=lines[0].rstrip("\r"), path=path)
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.rstrip("\r").split("\t")
        if len(parts) < 2 or not parts[0]:
            raise ValueError(f"{path}:{lineno}: expected 'relative/path<TAB>num_samples', got {line!r}")
        try:
            n = int(parts[1])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: num_samples {parts[1]!r} is not an integer") from None
        manifest.entries.append((parts[0], n))
    return manifest


def write_manifest(path: PathLike, root: PathLike, entries: Iterable[Tuple[str, int]]) -> None:
    """Write a manifest (root line, then ``relpath<TAB>num_samples`` lines)."""
    lines = [str(root)] + [f"{rel}\t{n}" for rel, n in entries]
    write_lines(path, lines)


def write_lines(path: PathLike, lines: Iterable[str]) -> None:
    """Write ``lines`` with ``\\n`` endings, atomically (tmp file + rename)."""
    path = str(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Audio validation and manifest creation
# --------------------------------------------------------------------------

INVALID_REASONS = ("unreadable", "sample_rate", "multichannel", "empty")


def inspect_audio(path: PathLike, required_sample_rate: Optional[int] = DEFAULT_SAMPLE_RATE) -> Tuple[int, Optional[str], str]:
    """Return ``(num_frames, reason, detail)`` for one audio file.

    ``reason`` is ``None`` when valid, otherwise one of :data:`INVALID_REASONS`,
    with a human readable ``detail``.
    """
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError
        return 0, "unreadable", f"cannot be read by soundfile ({e})"
    if required_sample_rate and info.samplerate != required_sample_rate:
        return info.frames, "sample_rate", f"sample rate {info.samplerate} Hz, expected {required_sample_rate} Hz"
    if info.channels != 1:
        return info.frames, "multichannel", f"{info.channels} channels, expected mono"
    if info.frames <= 0:
        return 0, "empty", "has zero samples"
    return info.frames, None, ""


def find_audio(root: PathLike, extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> List[str]:
    """Sorted relative paths (``/`` separated) of audio files under ``root``."""
    root = Path(root)
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    found = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts]
    return sorted(found)


def split_train_valid(items: Sequence, valid_percent: float, seed: int) -> Tuple[list, list]:
    """Deterministic train/valid split as wav2vec_manifest.py (fraction in [0, 1])."""
    if not 0.0 <= valid_percent <= 1.0:
        raise ValueError(f"valid_percent must be a fraction in [0, 1], got {valid_percent}")
    rand = random.Random(seed)
    train, valid = [], []
    for item in items:
        (valid if rand.random() < valid_percent else train).append(item)
    return train, valid


def make_manifest(
    root: PathLike,
    dest: PathLike,
    valid_percent: float = 0.01,
    seed: int = 42,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    required_sample_rate: Optional[int] = DEFAULT_SAMPLE_RATE,
    skip_invalid: bool = False,
) -> Dict[str, object]:
    """Write ``dest/train.tsv`` (and ``dest/valid.tsv`` if ``valid_percent > 0``).

    Every file is checked with :func:`inspect_audio`. An invalid file raises
    ``ValueError`` naming it, unless ``skip_invalid`` is set, in which case it
    is left out and counted per reason in the returned statistics
    (``{"train": n, "valid": n, "skipped": {reason: n}, "skipped_files": [...]}``).
    """
    root = os.path.realpath(str(root))
    if not os.path.isdir(root):
        raise ValueError(f"{root}: audio root is not a directory")
    files = find_audio(root, extensions)
    if not files:
        raise ValueError(f"{root}: no audio files with extension {', '.join(extensions)}")
    entries, skipped, skipped_files = [], Counter(), []
    for rel in files:
        frames, reason, detail = inspect_audio(os.path.join(root, rel), required_sample_rate)
        if reason is None:
            entries.append((rel, frames))
        elif skip_invalid:
            skipped[reason] += 1
            skipped_files.append((rel, reason, detail))
        else:
            raise ValueError(f"{os.path.join(root, rel)}: invalid audio: {detail} (use --skip-invalid to skip such files)")
    train, valid = split_train_valid(entries, valid_percent, seed)
    os.makedirs(str(dest), exist_ok=True)
    write_manifest(os.path.join(str(dest), "train.tsv"), root, train)
    if valid_percent > 0:
        write_manifest(os.path.join(str(dest), "valid.tsv"), root, valid)
    return {"train": len(train), "valid": len(valid), "skipped": dict(skipped), "skipped_files": skipped_files}


# --------------------------------------------------------------------------
# Dictionaries
# --------------------------------------------------------------------------


def count_letters(ltr_lines: Iterable[str]) -> Counter:
    """Symbol counts over ``.ltr`` lines (space separated symbols)."""
    counts: Counter = Counter()
    for line in ltr_lines:
        counts.update(line.split())
    return counts


def dictionary_entries(counts: Counter, extra_symbols: Iterable[str] = ()) -> List[Tuple[str, int]]:
    """``(symbol, count)`` sorted by count descending then symbol.

    ``extra_symbols`` missing from ``counts`` are included with count 0, so a
    dictionary can cover letters that occur only outside the training labels.
    """
    merged = Counter(counts)
    for sym in extra_symbols:
        merged.setdefault(sym, 0)
    return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))


def write_dictionary(path: PathLike, entries: Iterable[Tuple[str, int]]) -> None:
    """Write a fairseq dictionary (``SYMBOL COUNT`` per line)."""
    write_lines(path, [f"{sym} {n}" for sym, n in entries])


def read_dictionary(path: PathLike) -> List[str]:
    """Symbols of a fairseq dictionary file (``SYMBOL COUNT [#fairseq:overwrite]``)."""
    path = str(path)
    symbols = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split(" ")
            if parts[-1] == "#fairseq:overwrite":
                parts = parts[:-1]
            if len(parts) < 2 or not parts[0]:
                raise ValueError(f"{path}:{lineno}: expected 'SYMBOL COUNT', got {line!r}")
            try:
                int(parts[-1])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: count {parts[-1]!r} is not an integer") from None
            symbols.append(" ".join(parts[:-1]))
    return symbols


def _symbols(dictionary: Union[None, PathLike, Iterable[str]]) -> Optional[set]:
    if dictionary is None:
        return None
    if isinstance(dictionary, (str, os.PathLike)):
        return set(read_dictionary(dictionary))
    if hasattr(dictionary, "symbols"):  # a fairseq Dictionary (iterating it would never stop)
        return set(dictionary.symbols)
    return set(dictionary)


# --------------------------------------------------------------------------
# Transcripts -> labels
# --------------------------------------------------------------------------


def _manifest_keys(rel: str, root: str) -> List[str]:
    """Keys under which a transcript may name manifest entry ``rel``."""
    stem = os.path.splitext(rel)[0]
    return [rel, stem, os.path.join(root, rel), os.path.join(root, stem)]


def read_transcripts(
    transcripts_path: PathLike,
    manifest: Manifest,
    strict_order: bool = False,
) -> List[Tuple[str, int]]:
    """Raw transcripts in manifest order, as ``(text, transcript_lineno)``.

    Two formats, detected from the first non-empty line:

    * mapping: ``path<TAB>text`` per line, where ``path`` is the manifest's
      relative path (with or without extension) or the absolute path. Lines
      may come in any order unless ``strict_order``; every manifest entry needs
      exactly one line;
    * plain: one transcript per line, in manifest order.
    """
    tpath = str(transcripts_path)
    with open(tpath, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.rstrip("\r") for line in lines]
    mapping = "\t" in next((line for line in lines if line.strip()), "")
    if not mapping:
        if len(lines) != len(manifest):
            lineno = min(len(lines), len(manifest)) + 1
            raise ValueError(
                f"{tpath}:{lineno}: {len(lines)} transcript lines but manifest {manifest.path} "
                f"has {len(manifest)} entries (one transcript per manifest line, in order)"
            )
        return [(text, i) for i, text in enumerate(lines, start=1)]

    index: Dict[str, int] = {}
    for i, (rel, _) in enumerate(manifest.entries):
        for key in _manifest_keys(rel, manifest.root):
            index.setdefault(key, i)
    found: Dict[int, Tuple[str, int]] = {}
    for lineno, line in enumerate(lines, start=1):
        if "\t" not in line:
            raise ValueError(f"{tpath}:{lineno}: expected 'path<TAB>transcript', got {line!r}")
        key, text = line.split("\t", 1)
        i = index.get(key)
        if i is None:
            raise ValueError(f"{tpath}:{lineno}: {key!r} is not in manifest {manifest.path}")
        if i in found:
            raise ValueError(f"{tpath}:{lineno}: {key!r} already has a transcript on line {found[i][1]}")
        if strict_order and i != len(found):
            expected = manifest.entries[len(found)][0] if len(found) < len(manifest) else None
            raise ValueError(
                f"{tpath}:{lineno}: order mismatch: got {key!r} but manifest {manifest.path} line "
                f"{manifest.entry_lineno(len(found))} is {expected!r}"
            )
        found[i] = (text, lineno)
    if len(found) != len(manifest):
        missing = next(i for i in range(len(manifest)) if i not in found)
        raise ValueError(
            f"{tpath}:{len(lines) + 1}: {len(found)} transcripts for {len(manifest)} manifest entries; "
            f"no transcript for {manifest.entries[missing][0]!r} ({manifest.path}:{manifest.entry_lineno(missing)})"
        )
    return [found[i] for i in range(len(manifest))]


def normalize_checked(
    text: str,
    source: str,
    lineno: int,
    dictionary_symbols: Optional[set] = None,
) -> str:
    """Normalise one transcript; error (``source:lineno``) if empty or off-dictionary."""
    words = normalize_transcript(text)
    if not words:
        raise ValueError(f"{source}:{lineno}: empty transcript (after normalisation of {text!r})")
    if dictionary_symbols is not None:
        for ch in words.replace(" ", WORD_BOUNDARY):
            if ch not in dictionary_symbols:
                raise ValueError(f"{source}:{lineno}: character {ch!r} is not in the dictionary (in {words!r})")
    return words


def write_labels(out_dir: PathLike, split: str, word_transcripts: Sequence[str]) -> Tuple[str, str]:
    """Write ``<split>.wrd`` and ``<split>.ltr`` from normalised transcripts."""
    os.makedirs(str(out_dir), exist_ok=True)
    wrd = os.path.join(str(out_dir), f"{split}.wrd")
    ltr = os.path.join(str(out_dir), f"{split}.ltr")
    write_lines(wrd, word_transcripts)
    write_lines(ltr, [words_to_letters(w) for w in word_transcripts])
    return wrd, ltr


def make_labels(
    manifest_path: PathLike,
    transcripts_path: PathLike,
    out_dir: PathLike,
    split: Optional[str] = None,
    write_dict: bool = False,
    check_dict: Optional[PathLike] = None,
    strict_order: bool = False,
    phonemes: bool = False,
    write_phoneme_dict: bool = False,
) -> Dict[str, object]:
    """Write ``<split>.wrd``/``.ltr`` (and ``dict.ltr.txt``) for a manifest.

    ``split`` defaults to the manifest's file name without ``.tsv``. Raises
    ``ValueError`` naming file and line for any inconsistency. With ``phonemes``, also
    ``<split>.phn`` (espeak-ng phonemes of each transcript, normalised as described in
    :mod:`birq_fairseq.data.phonemes`) and, with ``write_dict`` or ``write_phoneme_dict``
    (which leaves ``dict.ltr.txt`` alone), ``dict.phn.txt``.
    """
    manifest = read_manifest(manifest_path)
    split = split or Path(str(manifest_path)).stem
    symbols = _symbols(check_dict)
    raw = read_transcripts(transcripts_path, manifest, strict_order=strict_order)
    words = [normalize_checked(text, str(transcripts_path), lineno, symbols) for text, lineno in raw]
    phn_lines = None
    if phonemes:  # before writing anything: a missing espeak-ng leaves no half-written labels
        try:
            phn_lines = [" ".join(p) for p in phonemize(words)]
        except PhonemeError as e:
            raise ValueError(f"{transcripts_path}:{raw[e.index][1]}: {e}") from None
    wrd, ltr = write_labels(out_dir, split, words)
    result: Dict[str, object] = {"split": split, "utterances": len(words), "wrd": wrd, "ltr": ltr}
    if write_dict:
        dict_path = os.path.join(str(out_dir), "dict.ltr.txt")
        write_dictionary(dict_path, dictionary_entries(count_letters(words_to_letters(w) for w in words)))
        result["dict"] = dict_path
    if phn_lines is not None:
        result["phn"] = os.path.join(str(out_dir), f"{split}.phn")
        write_lines(result["phn"], phn_lines)
        if write_dict or write_phoneme_dict:
            result["phn_dict"] = os.path.join(str(out_dir), "dict.phn.txt")
            write_dictionary(result["phn_dict"], dictionary_entries(count_letters(phn_lines)))
    return result


# --------------------------------------------------------------------------
# Checking existing label files
# --------------------------------------------------------------------------


def check_label_file(
    manifest_path: PathLike,
    label_path: PathLike,
    dictionary_symbols: Union[None, PathLike, Iterable[str]] = None,
) -> int:
    """Validate an existing ``.ltr``/``.wrd`` against its manifest; return its line count.

    Checks: one non-empty line per manifest entry; for ``.ltr`` files every
    token is a single symbol and each line ends with ``|``; with
    ``dictionary_symbols`` (an iterable of symbols, a ``dict.ltr.txt`` path or a
    fairseq ``Dictionary``)
    every ``.ltr`` token, or every character of a ``.wrd``/other label file, is
    in the dictionary. Raises ``ValueError("{label_path}:{lineno}: ...")``.
    """
    manifest = read_manifest(manifest_path)
    lpath = str(label_path)
    symbols = _symbols(dictionary_symbols)
    is_ltr = lpath.endswith(".ltr")
    with open(lpath, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    n, m = len(lines), len(manifest)
    if n != m:
        lineno = min(n, m) + 1
        what = "missing label line(s)" if n < m else "extra label line(s)"
        raise ValueError(f"{lpath}:{lineno}: {what}: {n} lines but manifest {manifest.path} has {m} entries")
    for lineno, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line.strip():
            raise ValueError(f"{lpath}:{lineno}: empty label line (manifest entry {manifest.entries[lineno - 1][0]!r})")
        if is_ltr:
            tokens = line.split()
            bad = next((t for t in tokens if len(t) != 1), None)
            if bad is not None:
                raise ValueError(f"{lpath}:{lineno}: letter labels must be single space-separated symbols, got {bad!r}")
            if tokens[-1] != WORD_BOUNDARY:
                raise ValueError(f"{lpath}:{lineno}: letter label line must end with {WORD_BOUNDARY!r}")
        else:
            tokens = [ch for ch in line if not ch.isspace()]
        if symbols is not None:
            bad = next((t for t in tokens if t not in symbols), None)
            if bad is not None:
                raise ValueError(f"{lpath}:{lineno}: symbol {bad!r} is not in the dictionary")
    return n
