"""Fast unit tests: CTC decoders, the birq_finetuning task's generator and label checks."""

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fairseq.data import Dictionary  # noqa: E402

from birq_fairseq.decoding import GreedyCTCDecoder, LexiconBeamCTCDecoder, build_ctc_decoder  # noqa: E402

LETTERS = list("ABCDE")
LEXICON_WORDS = ["ABBA", "BAD", "CAB", "DEAD", "BEAD", "ACE"]


def make_dict():
    d = Dictionary()  # <s>=0 (CTC blank), <pad>=1, </s>=2, <unk>=3
    for s in ["|"] + LETTERS:
        d.add_symbol(s)
    return d


def emission_for(d, frames, vocab=None, peak=5.0):
    """Log-softmax emissions whose per-frame argmax is the given symbol ('-' = blank)."""
    V = len(d)
    x = torch.zeros(len(frames), V)
    for t, s in enumerate(frames):
        x[t, d.bos() if s == "-" else d.index(s)] = peak
    return torch.log_softmax(x, dim=-1)


def test_greedy_known_string():
    d = make_dict()
    frames = list("AA-AB|--CC|") + ["-"]
    em = emission_for(d, frames)
    dec = GreedyCTCDecoder(d)
    assert dec.blank == d.bos() == 0
    [[hyp]] = dec.decode(em.unsqueeze(0))
    assert d.string(hyp["tokens"], "letter") == "AAB C"
    assert hyp["words"] == ["AAB", "C"]
    assert len(hyp["positional_scores"]) == len(hyp["tokens"]) == 6
    assert hyp["score"] == pytest.approx(float(em.max(-1).values.sum()))
    assert hyp["alignment"] is None


def test_greedy_batched_respects_lengths():
    d = make_dict()
    a = emission_for(d, list("CAB|"))
    b = emission_for(d, list("BAD|"))
    # pad utterance a with frames that would decode to 'E' if padding were not ignored
    pad = emission_for(d, list("EEEE"))
    em = torch.stack([torch.cat([a, pad]), torch.cat([b, pad])])
    hyps = GreedyCTCDecoder(d).decode(em, torch.tensor([4, 8]))
    assert d.string(hyps[0][0]["tokens"], "letter") == "CAB"
    assert d.string(hyps[1][0]["tokens"], "letter") == "BAD E"


def write_lexicon(path, words):
    with open(path, "w") as f:
        for w in words:
            f.write(w + "\t" + " ".join(w) + " |\n")
    return str(path)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_lexicon_decoder_only_lexicon_words(tmp_path, seed):
    d = make_dict()
    lex = write_lexicon(tmp_path / "lexicon.txt", LEXICON_WORDS)
    dec = LexiconBeamCTCDecoder(d, lex, beam=20)
    g = torch.Generator().manual_seed(seed)
    em = torch.log_softmax(3.0 * torch.randn(3, 60, len(d), generator=g), dim=-1)
    hyps = dec.decode(em, torch.tensor([60, 45, 30]))
    assert len(hyps) == 3
    n_words = 0
    for h in hyps:
        words = h[0]["words"]
        n_words += len(words)
        assert all(w in LEXICON_WORDS for w in words), words
        # the token sequence fairseq-generate prints spells exactly these words
        assert d.string(h[0]["tokens"], "letter") == " ".join(words)
        assert len(h[0]["positional_scores"]) == len(h[0]["tokens"])
    assert n_words > 0  # random emissions still produce some words


def test_lexicon_decoder_recovers_clean_path(tmp_path):
    d = make_dict()
    lex = write_lexicon(tmp_path / "lexicon.txt", LEXICON_WORDS)
    em = emission_for(d, list("-CC-AB-|--BB-AAD|-"))
    [[hyp]] = LexiconBeamCTCDecoder(d, lex, beam=10).decode(em.unsqueeze(0))
    assert hyp["words"] == ["CAB", "BAD"]


def test_build_ctc_decoder_errors(tmp_path):
    d = make_dict()
    with pytest.raises(ValueError, match="--lexicon"):
        build_ctc_decoder(d, "lexicon")
    with pytest.raises(ValueError, match="unknown CTC decoder"):
        build_ctc_decoder(d, "viterbi")
    bad = tmp_path / "bad_lexicon.txt"
    bad.write_text("HELLO\tH E L L O |\n")
    with pytest.raises(ValueError, match="not in the dictionary"):
        build_ctc_decoder(d, "lexicon", lexicon=str(bad))


# ---------------------------------------------------------------------------
# the task: generator + label validation
# ---------------------------------------------------------------------------


def setup_task(data, **over):
    from omegaconf import OmegaConf
    from fairseq import tasks

    import birq_fairseq.tasks  # noqa: F401  (registers birq_finetuning)

    cfg = {"_name": "birq_finetuning", "data": str(data), "labels": "ltr", "tpu": False, "seed": 1}
    cfg.update(over)
    return tasks.setup_task(OmegaConf.create(cfg))


def write_split(data, split, ltr_lines, n_audio=None):
    n_audio = len(ltr_lines) if n_audio is None else n_audio
    with open(data / f"{split}.tsv", "w") as f:
        f.write(str(data) + "\n")
        for i in range(n_audio):
            f.write(f"utt{i}.wav\t16000\n")
    with open(data / f"{split}.ltr", "w") as f:
        f.writelines(line + "\n" for line in ltr_lines)
    return str(data / f"{split}.ltr")


@pytest.fixture
def data_dir(tmp_path):
    with open(tmp_path / "dict.ltr.txt", "w") as f:
        for s in ["|"] + LETTERS:
            f.write(f"{s} 10\n")
    return tmp_path


def test_task_builds_ctc_generator(data_dir, tmp_path):
    from fairseq.dataclass.configs import GenerationConfig

    task = setup_task(data_dir)
    gen = task.build_generator([], GenerationConfig())
    assert isinstance(gen, GreedyCTCDecoder)
    lex = write_lexicon(tmp_path / "lexicon.txt", LEXICON_WORDS)
    task = setup_task(data_dir, ctc_decoder="lexicon", lexicon=lex)
    gen = task.build_generator([], GenerationConfig(beam=7))
    assert isinstance(gen, LexiconBeamCTCDecoder)


def test_labels_default_to_ltr(data_dir):
    from omegaconf import OmegaConf
    from fairseq import tasks

    import birq_fairseq.tasks  # noqa: F401

    # fairseq-generate without --labels: the stock task would have no target dictionary
    task = tasks.setup_task(OmegaConf.create({"_name": "birq_finetuning", "data": str(data_dir), "tpu": False, "seed": 1}))
    assert task.target_dictionary is not None and "|" in task.target_dictionary.indices


def test_valid_labels_load(data_dir):
    write_split(data_dir, "train", ["A B | C |", "B A D |"])
    task = setup_task(data_dir)
    task.load_dataset("train")
    assert len(task.dataset("train")) == 2


@pytest.mark.parametrize(
    "lines,n_audio,lineno,message",
    [
        (["A B |", "C |"], 3, 3, "missing label line"),
        (["A B |", "C |", "D |"], 2, 3, "extra label line"),
        (["A B |", "", "D |"], 3, 2, "empty label line"),
        (["A B |", "C Z |"], 2, 2, "'Z' is not in the dictionary"),
    ],
)
def test_label_errors_name_file_and_line(data_dir, lines, n_audio, lineno, message):
    path = write_split(data_dir, "train", lines, n_audio)
    task = setup_task(data_dir)
    with pytest.raises(ValueError) as e:
        task.load_dataset("train")
    msg = str(e.value)
    assert msg.startswith(f"{path}:{lineno}: "), msg
    assert message in msg, msg


def test_label_validation_can_be_disabled(data_dir):
    write_split(data_dir, "train", ["A B |", "C Z |"])
    task = setup_task(data_dir, validate_labels=False)
    task.load_dataset("train")  # stock behaviour: Z silently becomes <unk>
    d, ds = task.target_dictionary, task.dataset("train")
    assert "Z" not in d.indices
    labels = [ds.get_label(i, process_fn=ds.process_label).tolist() for i in range(len(ds))]
    # The known letters keep their indices; the unknown one is <unk>, not dropped or an error.
    assert labels[0] == [d.index("A"), d.index("B"), d.index("|")]
    assert labels[1] == [d.index("C"), d.unk(), d.index("|")]
    assert d.string(torch.tensor(labels[1])) == "C <unk> |"


def test_safe_globals_allow_dictionary(tmp_path):
    from birq_fairseq.safe_globals import allow_fairseq_checkpoint_globals

    allow_fairseq_checkpoint_globals()
    p = tmp_path / "ck.pt"
    torch.save({"dict": make_dict(), "w": torch.ones(2)}, p)
    state = torch.load(p, weights_only=True)
    assert state["dict"].index("|") == make_dict().index("|")


def write_unigram_arpa(path, words, logp=None):
    """A (trivial) bigram ARPA: KenLM refuses pure unigram models."""
    logp = logp or {}
    uni = [("<s>", -99.0), ("</s>", -1.0), ("<unk>", -5.0)] + [(w, logp.get(w, -1.0)) for w in words]
    lines = ["\\data\\", f"ngram 1={len(uni)}", f"ngram 2={len(words)}", "", "\\1-grams:"]
    lines += [f"{p}\t{w}\t0" for w, p in uni]
    lines += ["", "\\2-grams:"] + [f"{logp.get(w, -1.0)}\t<s> {w}" for w in words]
    lines += ["", "\\end\\", ""]
    Path(path).write_text("\n".join(lines))
    return str(path)


def test_lexicon_decoder_with_kenlm(tmp_path):
    d = make_dict()
    words = LEXICON_WORDS + ["CAD"]
    lex = write_lexicon(tmp_path / "lexicon.txt", words)
    # first letter acoustically ambiguous between B and C: the LM decides
    em = emission_for(d, list("-XX-AD-|-".replace("X", "B")), peak=5.0)
    em[1:3, d.index("C")] = em[1:3, d.index("B")]
    for prefer, other in [("BAD", "CAD"), ("CAD", "BAD")]:
        arpa = write_unigram_arpa(tmp_path / f"lm_{prefer}.arpa", words, {prefer: -0.1, other: -6.0})
        dec = build_ctc_decoder(d, "lexicon", lexicon=lex, kenlm_model=arpa, beam=20, lm_weight=2.0)
        [[hyp]] = dec.decode(em.unsqueeze(0))
        assert hyp["words"] == [prefer]
    g = torch.Generator().manual_seed(0)
    em = torch.log_softmax(3.0 * torch.randn(2, 50, len(d), generator=g), dim=-1)
    for h in dec.decode(em):
        assert all(w in words for w in h[0]["words"])
