"""``birq-fairseq-infer``: fairseq's ``speech_recognition/new/infer.py`` command line (issue #11, item 1).

On one finetuned checkpoint (the session's ``e2e_checkpoints``), the infer.py-style command
must give the WER ``fairseq-generate --task birq_finetuning --scoring wer`` prints, with the
same hypotheses, and write infer.py's files (``hypo.word``, ``hypo.units``, ``ref.word``,
``ref.units``, ``wer``): greedy (``decoding.type=viterbi``) with fairseq's own
``conf/infer.yaml``, and lexicon + KenLM beam search (``decoding.type=kenlm``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_finetune_e2e import BIN, PKG, WORDS, parse_generate, run  # noqa: E402

pytestmark = pytest.mark.e2e

def fairseq_infer_conf() -> Path:
    """fairseq's own examples/speech_recognition/new/conf (inside the installed package)."""
    import fairseq

    return Path(fairseq.__file__).parent / "examples" / "speech_recognition" / "new" / "conf"


def generate(tmp, data, ckpt, *extra):
    out = run([BIN / "fairseq-generate", data, "--task", "birq_finetuning", "--path", ckpt, "--gen-subset", "test",
               "--scoring", "wer", "--post-process", "letter", "--user-dir", PKG, "--cpu", *extra], tmp)
    return parse_generate(out)


def logged_wer(text: str) -> float:
    m = re.search(r"Word error rate: ([0-9.]+)", text)
    assert m, text[-3000:]
    return float(m.group(1))


def read_results(path: Path, name: str):
    """``{utterance id: text}`` from an infer.py results file (``text (None-<id>)`` lines)."""
    out = {}
    for line in (path / name).read_text().splitlines():
        m = re.fullmatch(r"(.*) \(None-(\d+)\)", line)
        assert m, line
        out[int(m.group(2))] = m.group(1)
    return out


def test_infer_command_line_matches_generate(e2e_checkpoints):
    """infer.py's own command line (fairseq's conf dir, task=audio_finetuning) through the console script."""
    tmp, data, _, ckpt = e2e_checkpoints
    hyps, refs, gen_wer = generate(tmp, data, ckpt)
    results = tmp / "infer_viterbi"
    out = run([BIN / "birq-fairseq-infer", "--config-dir", fairseq_infer_conf(), "--config-name", "infer",
               "task=audio_finetuning", f"task.data={data}", "task.labels=ltr", f"common_eval.path={ckpt}",
               "dataset.gen_subset=test", "decoding.type=viterbi", f"common_eval.results_path={results}",
               f"common.user_dir={PKG}", "common.cpu=true"], tmp)
    wer = logged_wer(out)
    assert wer == pytest.approx(gen_wer, abs=0.006)

    # infer.py's files, in its run dir common_eval.results_path/<gen_subset>
    res = results / "test"
    assert float((res / "wer").read_text().splitlines()[0].split()[1]) == pytest.approx(wer, abs=1e-4)
    hypo_word, ref_word = read_results(res, "hypo.word"), read_results(res, "ref.word")
    assert hypo_word == hyps  # the H- lines of fairseq-generate, utterance by utterance
    wrd = [line.strip() for line in open(data / "test.wrd")]
    assert ref_word == dict(enumerate(wrd))
    units = read_results(res, "ref.units")
    assert {i: u.replace(" ", "").replace("|", " ").strip() for i, u in units.items()} == ref_word
    assert sorted(read_results(res, "hypo.units")) == sorted(hyps)


def test_infer_kenlm_lexicon_matches_generate(e2e_checkpoints):
    """decoding.type=kenlm with a lexicon and a KenLM (ARPA) model, as ``python -m birq_fairseq.infer``,
    on birq_fairseq's packaged ``infer`` config, against fairseq-generate's lexicon decoder."""
    tmp, data, _, ckpt = e2e_checkpoints
    lm = tmp / "words.arpa"
    unigrams = "\n".join(f"{-0.8 - 0.05 * i:.2f}\t{w}\t-0.2" for i, w in enumerate(WORDS))
    lm.write_text(f"\n\\data\\\nngram 1={len(WORDS) + 3}\nngram 2=2\n\n\\1-grams:\n-1.0\t<unk>\t0\n-99\t<s>\t-0.3\n"
                  f"-0.9\t</s>\t0\n{unigrams}\n\n\\2-grams:\n-0.3\t<s> BAD\n-0.4\tDEAD </s>\n\n\\end\\\n")
    hyps, refs, gen_wer = generate(tmp, data, ckpt, "--ctc-decoder", "lexicon", "--lexicon", data / "lexicon.txt",
                                   "--kenlm-model", lm, "--lm-weight", "1", "--word-score", "0", "--beam", "10")
    results = tmp / "infer_kenlm"
    out = run([sys.executable, "-m", "birq_fairseq.infer", "task=audio_finetuning", f"task.data={data}",
               f"common_eval.path={ckpt}", "common.cpu=true", "decoding.type=kenlm",
               f"decoding.lexicon={data / 'lexicon.txt'}", f"decoding.lmpath={lm}", "decoding.lmweight=1",
               "decoding.wordscore=0", "decoding.beam=10", f"decoding.results_path={results}"], tmp)
    assert logged_wer(out) == pytest.approx(gen_wer, abs=0.006)
    hypo_word = read_results(results, "hypo.word")
    assert hypo_word == hyps
    assert all(w in WORDS for h in hypo_word.values() for w in h.split())
    assert not (Path(tmp) / "None").exists()  # no results_path-less hydra run dir left behind


def test_infer_without_dictionary_uses_the_checkpoint_copy(e2e_checkpoints, tmp_path):
    """A data dir without dict.ltr.txt: the finetuned checkpoint's own dictionary decodes it."""
    import shutil

    tmp, data, _, ckpt = e2e_checkpoints
    bare = tmp_path / "data"
    shutil.copytree(data, bare)
    os.remove(bare / "dict.ltr.txt")
    _, _, gen_wer = generate(tmp, data, ckpt)
    out = run([sys.executable, "-m", "birq_fairseq.infer", "task=audio_finetuning", f"task.data={bare}",
               f"common_eval.path={ckpt}", "common.cpu=true"], tmp)
    assert logged_wer(out) == pytest.approx(gen_wer, abs=0.006)
