"""Tests of the deterministic TTS demo corpus (manifests/tts_corpus.py, manifests/build_corpus.py).

The build tests need the Debian TTS engines (scripts/install_tts.sh); they are
skipped with the list of missing packages when those are absent.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import soundfile as sf

from birq_fairseq.data.labels import check_label_file, read_dictionary, read_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "manifests"))
import tts_corpus as corpus  # noqa: E402  demo tooling beside the plugin (manifests/tts_corpus.py)

SEED = 7
MISSING = corpus.missing_dependencies()
needs_tts = pytest.mark.skipif(
    bool(MISSING),
    reason="TTS engines/text sources not installed (run scripts/install_tts.sh): "
    + ", ".join(sorted({pkg for _, pkg in MISSING})),
)
TEXT_FILES = [f"{s}.tsv" for s in corpus.SPLITS] + [
    f"{s}.{ext}" for s in corpus.LABELLED_SPLITS for ext in ("wrd", "ltr")
] + ["dict.ltr.txt", "metadata.tsv", "corpus.json"]


def _wav_hashes(root):
    out = {}
    for dirpath, _, files in os.walk(os.path.join(root, "wav")):
        for f in files:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _body(path):
    """File bytes without a manifest's first (root) line."""
    data = open(path, "rb").read()
    return data.split(b"\n", 1)[1] if path.endswith(".tsv") and not path.endswith("metadata.tsv") else data


def _metadata(root):
    with open(os.path.join(root, "metadata.tsv"), encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    keys = header.split("\t")
    return [dict(zip(keys, r.split("\t"))) for r in rows]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny corpus built twice: in-process (a) and through the CLI in a subprocess (b)."""
    a = str(tmp_path_factory.mktemp("corpus_a"))
    b = str(tmp_path_factory.mktemp("corpus_b"))
    stats = corpus.build_corpus(a, seed=SEED, size="tiny", jobs=2, progress=False, log=lambda *_: None)
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, "manifests", "build_corpus.py"), "--out", b, "--size", "tiny",
         "--seed", str(SEED), "--jobs", "2", "--no-progress"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    return a, b, stats


# ---------------------------------------------------------------- no engines needed


def test_clean_sentence():
    assert corpus.clean_sentence("And God said, Let there be light.") == "and god said let there be light"
    assert corpus.clean_sentence("He isn't 'here' today!") == "he isn't here today"
    assert corpus.clean_sentence("We met Mr. Smith at noon") is None  # vowel-less abbreviation
    assert corpus.clean_sentence("The USA is large today") is None  # acronym
    assert corpus.clean_sentence("It costs 5 dollars or more") is None  # digit
    assert corpus.clean_sentence("too short here") is None
    assert corpus.clean_sentence(" ".join(["word"] * 26)) is None
    assert corpus.clean_sentence("x marks the spot here") is None  # stray letter


def test_presets_and_overrides():
    assert corpus.resolve_counts("quick")["train"] == 400
    c = corpus.resolve_counts("default", {"train": 5, "valid": None})
    assert c["train"] == 5 and c["valid"] == corpus.PRESETS["default"]["valid"]
    with pytest.raises(ValueError, match="unknown size"):
        corpus.resolve_counts("huge")
    with pytest.raises(ValueError, match="must be >= 0"):
        corpus.resolve_counts("tiny", {"train": -1})


def test_plan_disjoint_sentences_and_unseen_voices():
    pool = [f"sentence number {i} here" for i in range(100)]
    counts = dict(train=30, finetune=20, valid=10, test_seen=10, test_unseen=20)
    plan = corpus.plan_utterances(3, counts, pool)
    assert plan == corpus.plan_utterances(3, counts, pool)
    assert len({u.text for u in plan}) == len(plan) == 90
    for u in plan:
        assert corpus.is_unseen(u.voice) == (u.split == "test_unseen")
    assert len({u.voice.engine for u in plan}) == 3
    with pytest.raises(ValueError, match="distinct sentences"):
        corpus.plan_utterances(3, dict(counts, train=200), pool)


def test_missing_engine_message(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(corpus.shutil, "which", lambda exe: None if exe == "flite" else real_which(exe))
    with pytest.raises(corpus.MissingDependencyError) as e:
        corpus.build_corpus("/nonexistent/never/created", size="tiny")
    msg = str(e.value)
    assert "executable 'flite': install Debian package 'flite'" in msg
    assert "scripts/install_tts.sh" in msg
    assert not os.path.exists("/nonexistent/never/created")


# ---------------------------------------------------------------- builds


@needs_tts
def test_every_voice_is_distinct(tmp_path):
    """Each voice must really sound different (espeak-ng silently ignores unknown voices/variants)."""
    hashes = {}
    for voice in corpus.all_voices():
        if voice.engine == "festival":
            continue  # three distinct voice directories, checked by missing_dependencies()
        out = str(tmp_path / "x.wav")
        corpus.synthesize_raw(voice, "hello there", out, str(tmp_path))
        with open(out, "rb") as f:
            hashes.setdefault(hashlib.sha256(f.read()).hexdigest(), []).append(voice.id)
    dupes = [ids for ids in hashes.values() if len(ids) > 1]
    assert not dupes, f"voices with identical audio: {dupes}"


@needs_tts
def test_deterministic_for_seed(built):
    a, b, _ = built
    for name in TEXT_FILES:
        assert _body(os.path.join(a, name)) == _body(os.path.join(b, name)), name
    ha, hb = _wav_hashes(a), _wav_hashes(b)
    assert ha == hb and len(ha) == sum(corpus.PRESETS["tiny"][s] for s in corpus.SPLITS)


@needs_tts
def test_no_sentence_in_two_splits(built):
    a, _, _ = built
    rows = _metadata(a)
    by_split = {}
    for r in rows:
        by_split.setdefault(r["split"], set()).add(r["text"])
    assert sum(len(v) for v in by_split.values()) == len(rows)  # distinct overall
    for s in corpus.LABELLED_SPLITS:
        with open(os.path.join(a, f"{s}.wrd")) as f:
            assert {line.lower() for line in f.read().splitlines()} == by_split[s]


@needs_tts
def test_unseen_voices_only_in_test_unseen(built):
    a, _, stats = built
    rows = _metadata(a)
    unseen = set(stats["unseen_voices"])
    assert unseen and not unseen & set(stats["seen_voices"])
    assert {r["voice"] for r in rows if r["split"] == "test_unseen"} <= unseen
    assert not {r["voice"] for r in rows if r["split"] != "test_unseen"} & unseen
    for r in rows:  # the voice is also in the wav path
        assert r["path"].startswith(f"wav/{r['split']}/{r['voice']}/")


@needs_tts
def test_manifests_match_audio(built):
    a, _, stats = built
    for split in corpus.SPLITS:
        m = read_manifest(os.path.join(a, f"{split}.tsv"))
        assert m.root == a
        assert len(m) == corpus.PRESETS["tiny"][split] == stats["splits"][split]["utterances"]
        for rel, n in m.entries:
            info = sf.info(os.path.join(m.root, rel))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.frames == n
            assert 0.5 < n / 16000 < 10.0


@needs_tts
def test_labels_match_manifests_and_dict(built):
    a, _, _ = built
    dict_path = os.path.join(a, "dict.ltr.txt")
    symbols = read_dictionary(dict_path)
    assert set(corpus.ALPHABET) <= set(symbols)
    lines = open(dict_path).read().splitlines()
    counts = [(ln.split()[0], int(ln.split()[1])) for ln in lines]
    assert counts == sorted(counts, key=lambda kv: (-kv[1], kv[0]))
    ft_tokens = open(os.path.join(a, "finetune.ltr")).read().split()
    assert dict(counts)["|"] == ft_tokens.count("|") > 0
    for split in corpus.LABELLED_SPLITS:
        tsv, ltr, wrd = (os.path.join(a, f"{split}.{e}") for e in ("tsv", "ltr", "wrd"))
        assert check_label_file(tsv, ltr, symbols) == corpus.PRESETS["tiny"][split]
        assert check_label_file(tsv, wrd, symbols) == corpus.PRESETS["tiny"][split]
        for w, letters in zip(open(wrd).read().splitlines(), open(ltr).read().splitlines()):
            assert letters == " ".join(w.replace(" ", "|")) + " |"


@needs_tts
def test_rerun_reuses_and_repairs(built, tmp_path):
    a, _, _ = built
    before = {p: os.stat(os.path.join(a, p)).st_mtime_ns for p in _wav_hashes(a)}
    texts = {n: _body(os.path.join(a, n)) for n in TEXT_FILES}
    corpus.build_corpus(a, seed=SEED, size="tiny", jobs=2, progress=False, log=lambda *_: None)
    assert {p: os.stat(os.path.join(a, p)).st_mtime_ns for p in before} == before
    assert {n: _body(os.path.join(a, n)) for n in TEXT_FILES} == texts

    # a truncated wav, a deleted wav and a leftover tmp file from an interrupted build
    paths = sorted(before)
    hashes = _wav_hashes(a)
    with open(os.path.join(a, paths[0]), "r+b") as f:
        f.truncate(20)
    os.remove(os.path.join(a, paths[1]))
    leftover = os.path.join(a, paths[2] + ".tmp-123-train-0")
    open(leftover, "wb").close()
    corpus.build_corpus(a, seed=SEED, size="tiny", jobs=2, progress=False, log=lambda *_: None)
    assert _wav_hashes(a) == hashes
    assert not os.path.exists(leftover)
    after = {p: os.stat(os.path.join(a, p)).st_mtime_ns for p in before}
    assert [p for p in paths if after[p] != before[p]] == sorted(paths[:2])


@needs_tts
def test_other_seed_and_overrides(built, tmp_path):
    out = str(tmp_path / "c")
    stats = corpus.build_corpus(out, seed=SEED + 1, size="tiny", overrides={"train": 1, "test_unseen": 1},
                                jobs=2, progress=False, log=lambda *_: None)
    assert stats["counts"]["train"] == 1 and stats["counts"]["test_unseen"] == 1
    assert stats["counts"]["finetune"] == corpus.PRESETS["tiny"]["finetune"]
    assert len(read_manifest(os.path.join(out, "train.tsv"))) == 1
    with open(os.path.join(out, "corpus.json")) as f:
        assert json.load(f)["seed"] == SEED + 1
    assert stats["total_hours"] > 0
    other = open(os.path.join(out, "finetune.wrd")).read()
    assert other != open(os.path.join(built[0], "finetune.wrd")).read()
