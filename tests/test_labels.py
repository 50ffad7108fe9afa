"""Tests of the fairseq manifest/label tooling (birq_fairseq.data.labels and its CLIs)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from birq_fairseq.data.labels import (
    check_label_file,
    count_letters,
    dictionary_entries,
    letters_to_words,
    make_labels,
    make_manifest,
    normalize_transcript,
    read_dictionary,
    read_manifest,
    words_to_letters,
    write_dictionary,
    write_manifest,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wav(path, n=1600, sr=16000, channels=1):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.zeros((n, channels), dtype=np.float32) if channels > 1 else np.zeros(n, dtype=np.float32)
    if n:
        data[...] = 0.1
    sf.write(str(path), data, sr, subtype="PCM_16")


@pytest.fixture
def audio_root(tmp_path):
    root = tmp_path / "audio"
    for i, name in enumerate(["spk1/a.wav", "spk1/b.wav", "spk2/c.flac", "spk2/d.wav", "e.wav"]):
        _wav(root / name, n=1000 + i)
    (root / "notes.txt").write_text("not audio")
    return root


def _manifest(tmp_path, rels=("a.wav", "b.wav", "sub/c.wav")):
    path = tmp_path / "split.tsv"
    write_manifest(path, "/data/root", [(r, 100 * (i + 1)) for i, r in enumerate(rels)])
    return path


# ---------------------------------------------------------------- formatting


def test_letter_format_matches_libri_labels():
    assert words_to_letters("HELLO WORLD") == "H E L L O | W O R L D |"
    assert words_to_letters("I") == "I |"
    assert words_to_letters("DON'T GO") == "D O N ' T | G O |"
    assert letters_to_words("H E L L O | W O R L D |") == "HELLO WORLD"


def test_normalize_transcript():
    assert normalize_transcript("  Well-known,\tisn't it?  ") == "WELL KNOWN ISN'T IT"
    assert normalize_transcript("Room 101 -- 'quote'") == "ROOM 'QUOTE'"
    assert normalize_transcript("' 42 !") == ""


def test_dictionary_sorted_by_count_then_symbol(tmp_path):
    counts = count_letters(["A B | B |", "C A |"])
    entries = dictionary_entries(counts, extra_symbols=["Z", "A"])
    assert entries == [("|", 3), ("A", 2), ("B", 2), ("C", 1), ("Z", 0)]
    path = tmp_path / "dict.ltr.txt"
    write_dictionary(path, entries)
    assert path.read_text() == "| 3\nA 2\nB 2\nC 1\nZ 0\n"
    assert read_dictionary(path) == ["|", "A", "B", "C", "Z"]


def test_read_dictionary_errors(tmp_path):
    path = tmp_path / "dict.ltr.txt"
    path.write_text("A 1\nB\n")
    with pytest.raises(ValueError, match=r"dict\.ltr\.txt:2: expected 'SYMBOL COUNT'"):
        read_dictionary(path)
    path.write_text("A 1\nB x\n")
    with pytest.raises(ValueError, match=r"dict\.ltr\.txt:2: count 'x'"):
        read_dictionary(path)


# ---------------------------------------------------------------- manifests


def test_make_manifest_format_and_determinism(audio_root, tmp_path):
    out1, out2 = tmp_path / "m1", tmp_path / "m2"
    s1 = make_manifest(audio_root, out1, valid_percent=0.4, seed=3)
    make_manifest(audio_root, out2, valid_percent=0.4, seed=3)
    for name in ("train.tsv", "valid.tsv"):
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes()
    train, valid = read_manifest(out1 / "train.tsv"), read_manifest(out1 / "valid.tsv")
    assert train.root == os.path.realpath(audio_root) == valid.root
    rels = sorted(r for r, _ in train.entries + valid.entries)
    assert rels == ["e.wav", "spk1/a.wav", "spk1/b.wav", "spk2/c.flac", "spk2/d.wav"]
    assert s1["train"] + s1["valid"] == 5 and s1["skipped"] == {}
    for rel, n in train.entries + valid.entries:
        assert n == sf.info(os.path.join(train.root, rel)).frames
    lines = (out1 / "train.tsv").read_text().split("\n")
    assert lines[0] == os.path.realpath(audio_root) and lines[-1] == ""
    assert all(len(line.split("\t")) == 2 for line in lines[1:-1])
    # only wav
    make_manifest(audio_root, tmp_path / "m3", valid_percent=0.0, seed=3, extensions=["wav"])
    assert not (tmp_path / "m3" / "valid.tsv").exists()
    assert len(read_manifest(tmp_path / "m3" / "train.tsv")) == 4


@pytest.mark.parametrize(
    "name,kwargs,reason",
    [
        ("bad.wav", dict(sr=8000), "sample rate 8000"),
        ("bad.wav", dict(channels=2), "2 channels"),
        ("bad.wav", dict(n=0), "zero samples"),
        ("bad.wav", None, "cannot be read"),
    ],
)
def test_make_manifest_invalid_audio(audio_root, tmp_path, name, kwargs, reason):
    bad = audio_root / "spk1" / name
    if kwargs is None:
        bad.write_bytes(b"RIFF not really a wav")
    else:
        _wav(bad, **kwargs)
    with pytest.raises(ValueError, match=reason) as e:
        make_manifest(audio_root, tmp_path / "m", seed=1)
    assert str(bad) in str(e.value)
    stats = make_manifest(audio_root, tmp_path / "m", valid_percent=0.0, seed=1, skip_invalid=True)
    assert sum(stats["skipped"].values()) == 1 and stats["train"] == 5
    assert "spk1/bad.wav" not in (tmp_path / "m" / "train.tsv").read_text()


def test_make_manifest_cli(audio_root, tmp_path):
    _wav(audio_root / "stereo.wav", channels=2)
    _wav(audio_root / "narrow.wav", sr=8000)
    cli = [sys.executable, os.path.join(REPO, "manifests", "make_manifest.py"), str(audio_root),
           "--dest", str(tmp_path / "m"), "--valid-percent", "0"]
    res = subprocess.run(cli, capture_output=True, text=True)
    assert res.returncode == 1 and "narrow.wav" in res.stderr
    res = subprocess.run(cli + ["--skip-invalid"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "skipped 1 file(s): multichannel" in res.stdout
    assert "skipped 1 file(s): sample_rate" in res.stdout
    assert len(read_manifest(tmp_path / "m" / "train.tsv")) == 5


def test_read_manifest_errors(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("/root\na.wav\t10\nb.wav\n")
    with pytest.raises(ValueError, match=r"x\.tsv:3: expected"):
        read_manifest(path)
    path.write_text("/root\na.wav\tten\n")
    with pytest.raises(ValueError, match=r"x\.tsv:2: num_samples 'ten'"):
        read_manifest(path)


# ---------------------------------------------------------------- labels


def test_make_labels_plain_transcripts(tmp_path):
    manifest = _manifest(tmp_path)
    trans = tmp_path / "t.txt"
    trans.write_text("Hello, world!\nit's  ME\nthe end\n")
    res = make_labels(manifest, trans, tmp_path / "out", write_dict=True)
    assert res["utterances"] == 3
    assert (tmp_path / "out" / "split.wrd").read_text() == "HELLO WORLD\nIT'S ME\nTHE END\n"
    assert (tmp_path / "out" / "split.ltr").read_text() == (
        "H E L L O | W O R L D |\nI T ' S | M E |\nT H E | E N D |\n"
    )
    d = (tmp_path / "out" / "dict.ltr.txt").read_text().splitlines()
    assert d[0] == "| 6" and d[1] == "E 4"
    assert set(read_dictionary(tmp_path / "out" / "dict.ltr.txt")) == set("|HELOWRDITSMN'")
    assert check_label_file(manifest, tmp_path / "out" / "split.ltr", tmp_path / "out" / "dict.ltr.txt") == 3
    assert check_label_file(manifest, tmp_path / "out" / "split.wrd") == 3


def test_make_labels_mapping_any_order(tmp_path):
    manifest = _manifest(tmp_path)
    trans = tmp_path / "t.tsv"
    trans.write_text("sub/c\tthird\n/data/root/a.wav\tfirst\nb.wav\tsecond\n")
    make_labels(manifest, trans, tmp_path, split="x")
    assert (tmp_path / "x.wrd").read_text() == "FIRST\nSECOND\nTHIRD\n"
    with pytest.raises(ValueError, match=r"t\.tsv:1: order mismatch: got 'sub/c'.*split\.tsv line 2 is 'a\.wav'"):
        make_labels(manifest, trans, tmp_path, split="x", strict_order=True)


@pytest.mark.parametrize(
    "content,pattern",
    [
        ("one\ntwo\n", r"t\.txt:3: 2 transcript lines but manifest .*split\.tsv has 3"),
        ("one\ntwo\nthree\nfour\n", r"t\.txt:4: 4 transcript lines"),
        ("one\n  \nthree\n", r"t\.txt:2: empty transcript"),
        ("one\n1984\nthree\n", r"t\.txt:2: empty transcript"),
        ("a.wav\tone\nzzz.wav\ttwo\n", r"t\.txt:2: 'zzz\.wav' is not in manifest"),
        ("a.wav\tone\na\ttwo\n", r"t\.txt:2: 'a' already has a transcript on line 1"),
        ("a.wav\tone\nb.wav\ttwo\n", r"t\.txt:3: 2 transcripts for 3 manifest entries; no transcript for 'sub/c\.wav' \(.*split\.tsv:4\)"),
        ("a.wav\tone\nb.wav two\n", r"t\.txt:2: expected 'path<TAB>transcript'"),
    ],
)
def test_make_labels_errors(tmp_path, content, pattern):
    manifest = _manifest(tmp_path)
    trans = tmp_path / "t.txt"
    trans.write_text(content)
    with pytest.raises(ValueError, match=pattern):
        make_labels(manifest, trans, tmp_path / "out")
    assert not (tmp_path / "out" / "split.ltr").exists()


def test_make_labels_check_dict(tmp_path):
    manifest = _manifest(tmp_path)
    dict_path = tmp_path / "dict.ltr.txt"
    write_dictionary(dict_path, [(s, 1) for s in "|ABCDEFGHIJKLMNOPRSTUVWY"])
    trans = tmp_path / "t.txt"
    trans.write_text("hello\nquiz\nworld\n")
    with pytest.raises(ValueError, match=r"t\.txt:2: character 'Q' is not in the dictionary"):
        make_labels(manifest, trans, tmp_path / "out", check_dict=dict_path)
    trans.write_text("hello\nbig\nworld\n")
    make_labels(manifest, trans, tmp_path / "out", check_dict=dict_path)


def test_make_labels_cli(tmp_path):
    manifest = _manifest(tmp_path)
    trans = tmp_path / "t.txt"
    trans.write_text("one\ntwo\nthree\n")
    cli = [sys.executable, os.path.join(REPO, "manifests", "make_labels.py"), str(manifest),
           "--transcripts", str(trans), "--output-dir", str(tmp_path / "o"), "--dict"]
    res = subprocess.run(cli, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "o" / "split.ltr").read_text() == "O N E |\nT W O |\nT H R E E |\n"
    assert (tmp_path / "o" / "dict.ltr.txt").exists()
    trans.write_text("one\n\nthree\n")
    res = subprocess.run(cli, capture_output=True, text=True)
    assert res.returncode == 1 and "t.txt:2: empty transcript" in res.stderr


# ---------------------------------------------------------------- check_label_file


@pytest.mark.parametrize(
    "name,content,pattern",
    [
        ("s.ltr", "A |\nB |\n", r"s\.ltr:3: missing label line\(s\): 2 lines but manifest .* has 3"),
        ("s.ltr", "A |\nB |\nC |\nD |\n", r"s\.ltr:4: extra label line\(s\)"),
        ("s.ltr", "A |\n\nC |\n", r"s\.ltr:2: empty label line \(manifest entry 'b\.wav'\)"),
        ("s.ltr", "A |\nBC |\nC |\n", r"s\.ltr:2: letter labels must be single"),
        ("s.ltr", "A |\nB |\nC\n", r"s\.ltr:3: letter label line must end with '\|'"),
        ("s.ltr", "A |\nB |\nQ |\n", r"s\.ltr:3: symbol 'Q' is not in the dictionary"),
        ("s.wrd", "AB\nBA\nA Q\n", r"s\.wrd:3: symbol 'Q' is not in the dictionary"),
        ("s.wrd", "AB\n \nBA\n", r"s\.wrd:2: empty label line"),
    ],
)
def test_check_label_file_errors(tmp_path, name, content, pattern):
    manifest = _manifest(tmp_path)
    label = tmp_path / name
    label.write_text(content)
    with pytest.raises(ValueError, match=pattern) as e:
        check_label_file(manifest, label, dictionary_symbols=["A", "B", "C", "|"])
    assert str(e.value).startswith(f"{label}:")


def test_check_label_file_ok(tmp_path):
    manifest = _manifest(tmp_path)
    label = tmp_path / "s.ltr"
    label.write_text("A |\nB | A |\nC |\n")
    assert check_label_file(manifest, label) == 3
    assert check_label_file(manifest, label, ["A", "B", "C", "|"]) == 3


def test_check_label_file_with_dictionary_object(tmp_path):
    """The finetuning task may pass a fairseq Dictionary (has .symbols; iterating it never ends)."""

    class FakeDictionary:
        symbols = ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B"]

        def __getitem__(self, i):
            return self.symbols[i] if i < len(self.symbols) else "<unk>"

    manifest = _manifest(tmp_path)
    label = tmp_path / "s.ltr"
    label.write_text("A |\nB |\nC |\n")
    with pytest.raises(ValueError, match=r"s\.ltr:3: symbol 'C' is not in the dictionary"):
        check_label_file(manifest, label, FakeDictionary())
    label.write_text("A |\nB |\nA B |\n")
    assert check_label_file(manifest, label, FakeDictionary()) == 3
