"""End to end on CPU, through the console scripts a user runs.

pretrain (tiny BiRQ if the lead's model is present, else stock wav2vec2) a few
updates -> finetune with stock ``wav2vec_ctc`` via ``fairseq-hydra-train`` and
``examples/finetune/tiny_ctc.yaml`` -> ``fairseq-generate --task birq_finetuning
--scoring wer`` -> check the printed WER against an independent editdistance
computation over the H-/T- lines -> ``python -m birq_fairseq wer`` agrees.

Everything is written to pytest tmp dirs; nothing is left in the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "birq_fairseq"
BIN = Path(sys.executable).parent

# Letters -> tone frequencies, so the audio depends on the transcript.
LETTERS = "ABCDE"
WORDS = ["ABBA", "BAD", "CAB", "DEAD", "BEAD", "ACE", "BED", "DECADE"]
SR = 16000


def synth_utterance(words, rng, letter_sec=0.08):
    """Tone per letter (+ silence for word boundaries) plus a little noise."""
    pieces = []
    for w in words:
        for ch in w:
            f = 300.0 + 250.0 * LETTERS.index(ch)
            t = np.arange(int(letter_sec * SR)) / SR
            pieces.append(0.5 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(2 * np.pi * 2.5 * f * t))
        pieces.append(np.zeros(int(0.05 * SR)))
    x = np.concatenate(pieces)
    x = x + 0.02 * rng.standard_normal(len(x))
    return x.astype(np.float32)


def make_tiny_corpus(root: Path, splits=(("train", 24), ("valid", 6), ("test", 6)), seed=0):
    """Write wavs, fairseq manifests, .wrd/.ltr labels, dict.ltr.txt and a lexicon.

    Uses the project's own writers in ``birq_fairseq/data/labels.py``.
    Returns the data dir.
    """
    import soundfile as sf

    sys.path.insert(0, str(REPO))
    from birq_fairseq.data import labels as L

    root = Path(root)
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    all_ltr = []
    for split, n in splits:
        entries, transcripts = [], []
        for i in range(n):
            words = [WORDS[j] for j in rng.integers(0, len(WORDS), size=int(rng.integers(1, 4)))]
            x = synth_utterance(words, rng)
            rel = f"{split}_{i:03d}.wav"
            sf.write(str(audio / rel), x, SR, subtype="PCM_16")
            entries.append((rel, len(x)))
            transcripts.append(" ".join(words))
        L.write_manifest(data / f"{split}.tsv", audio, entries)
        L.write_labels(data, split, transcripts)
        all_ltr += [L.words_to_letters(t) for t in transcripts]
    L.write_dictionary(data / "dict.ltr.txt", L.dictionary_entries(L.count_letters(all_ltr), extra_symbols=LETTERS))
    with open(data / "lexicon.txt", "w") as f:
        for w in WORDS:
            f.write(w + "\t" + " ".join(w) + " |\n")
    return data


WAV2VEC2_TINY_PRETRAIN = """# @package _group_
common: {cpu: true, log_format: simple, log_interval: 1, seed: 1}
checkpoint: {no_epoch_checkpoints: true}
task: {_name: audio_pretraining, data: ???, max_sample_size: 32000, min_sample_size: 1000, normalize: false}
dataset: {num_workers: 0, max_tokens: 64000, required_batch_size_multiple: 1,
          skip_invalid_size_inputs_valid_test: true, disable_validation: true}
distributed_training: {distributed_world_size: 1}
criterion: {_name: wav2vec, infonce: true, log_keys: [prob_perplexity, code_perplexity, temp], loss_weights: [0.1, 10]}
optimization: {max_update: 4, lr: [0.0005]}
optimizer: {_name: adam, adam_betas: '(0.9,0.98)', adam_eps: 1e-06}
lr_scheduler: {_name: polynomial_decay, warmup_updates: 2}
model: {_name: wav2vec2, quantize_targets: true, conv_feature_layers: '[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2',
        encoder_layers: 2, encoder_embed_dim: 64, encoder_ffn_embed_dim: 128, encoder_attention_heads: 2,
        final_dim: 32, latent_vars: 16, latent_dim: 32, conv_pos: 16, conv_pos_groups: 4, num_negatives: 10,
        mask_prob: 0.3, mask_length: 4}
"""


def have_birq() -> bool:
    return (PKG / "models" / "birq.py").exists() and (REPO / "examples" / "pretrain" / "tiny_birq.yaml").exists()


def run(cmd, cwd, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    p = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n"
                             f"--- stdout ---\n{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-4000:]}")
    return p.stdout + p.stderr


def pretrain(tmp: Path, data: Path) -> Path:
    out = tmp / "pretrain"
    common = [f"task.data={data}", f"checkpoint.save_dir={out}", f"hydra.run.dir={out}/hydra",
              "optimization.max_update=3"]
    if have_birq():
        cmd = [BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples" / "pretrain",
               "--config-name", "tiny_birq", f"common.user_dir={PKG}", "++dataset.disable_validation=true",
               "++task.min_sample_size=1000", "++checkpoint.save_interval_updates=0"] + common
    else:
        cfgdir = tmp / "pretrain_cfg"
        cfgdir.mkdir()
        (cfgdir / "tiny_wav2vec2.yaml").write_text(WAV2VEC2_TINY_PRETRAIN)
        cmd = [BIN / "fairseq-hydra-train", "--config-dir", cfgdir, "--config-name", "tiny_wav2vec2"] + common
    run(cmd, tmp)
    ckpt = out / "checkpoint_last.pt"
    assert ckpt.exists()
    return ckpt


def finetune(tmp: Path, data: Path, w2v: Path) -> Path:
    out = tmp / "finetune"
    run([BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples" / "finetune", "--config-name", "tiny_ctc",
         f"common.user_dir={PKG}", f"task.data={data}", f"model.w2v_path={w2v}",
         f"checkpoint.save_dir={out}", f"hydra.run.dir={out}/hydra", "optimization.max_update=4"], tmp)
    ckpt = out / "checkpoint_last.pt"
    assert ckpt.exists()
    return ckpt


def parse_generate(text: str):
    hyps, refs = {}, {}
    for line in text.splitlines():
        if line.startswith("H-"):
            parts = line.split("\t")
            hyps[int(parts[0][2:])] = parts[2] if len(parts) > 2 else ""
        elif line.startswith("T-"):
            parts = line.split("\t")
            refs[int(parts[0][2:])] = parts[1] if len(parts) > 1 else ""
    m = re.search(r"Generate test with beam=\d+: WER: ([0-9.]+)", text)
    assert m, text[-3000:]
    return hyps, refs, float(m.group(1))


def independent_wer(hyps, refs):
    import editdistance

    errors = sum(editdistance.eval(refs[i].split(), hyps[i].split()) for i in refs)
    words = sum(len(refs[i].split()) for i in refs)
    return 100.0 * errors / words


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    data = make_tiny_corpus(tmp / "corpus")
    w2v = pretrain(tmp, data)
    ckpt = finetune(tmp, data, w2v)
    return tmp, data, ckpt


def test_generate_wer_matches_editdistance(pipeline):
    tmp, data, ckpt = pipeline
    # no --max-tokens, --labels or --required-batch-size-multiple: the task handles fairseq's text defaults
    out = run([BIN / "fairseq-generate", data, "--task", "birq_finetuning", "--path", ckpt, "--gen-subset", "test",
               "--scoring", "wer", "--post-process", "letter", "--user-dir", PKG, "--cpu"], tmp)
    hyps, refs, wer = parse_generate(out)
    n_test = sum(1 for _ in open(data / "test.ltr"))
    assert sorted(refs) == list(range(n_test)), "every test utterance decoded exactly once"
    assert sorted(hyps) == sorted(refs)
    wrd = [l.strip() for l in open(data / "test.wrd")]
    assert [refs[i] for i in range(n_test)] == wrd  # T- lines are the word transcripts
    assert wer == pytest.approx(independent_wer(hyps, refs), abs=0.006)

    # python -m birq_fairseq wer agrees with fairseq-generate
    hyp_file = tmp / "cli" / "hyps.txt"
    cli = run([sys.executable, "-m", "birq_fairseq", "wer", "--path", ckpt, "--data", data, "--subset", "test",
               "--user-dir", PKG, "--out", hyp_file, "--json"], tmp)
    res = [l for l in cli.splitlines() if l.startswith("{")]
    import json

    res = json.loads(res[-1])
    assert res["utterances"] == n_test
    assert res["wer"] == pytest.approx(wer, abs=0.006)
    cli_hyps = [l.rstrip("\n") for l in open(hyp_file)]
    cli_refs = [l.rstrip("\n") for l in open(str(hyp_file) + ".ref")]
    assert cli_hyps == [hyps[i] for i in range(n_test)]
    assert cli_refs == wrd


def test_generate_lexicon_decoder(pipeline):
    tmp, data, ckpt = pipeline
    out = run([BIN / "fairseq-generate", data, "--task", "birq_finetuning", "--path", ckpt, "--gen-subset", "test",
               "--scoring", "wer", "--post-process", "letter", "--user-dir", PKG, "--cpu",
               "--ctc-decoder", "lexicon", "--lexicon", data / "lexicon.txt", "--beam", "10"], tmp)
    hyps, refs, wer = parse_generate(out)
    assert len(hyps) == len(refs) > 0
    for h in hyps.values():
        assert all(w in WORDS for w in h.split()), h
    assert wer == pytest.approx(independent_wer(hyps, refs), abs=0.006)
