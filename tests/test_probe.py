"""The label-quality probe (birq_fairseq/probe.py): metrics, frame labels, codes, and one end-to-end run."""

import glob
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from birq_fairseq.probe import (
    force_align,
    frame_codes,
    frame_labels_from_alignment,
    label_quality,
    match_frames,
    stream_names,
)
from conftest import tiny_model_overrides


# --------------------------------------------------------------------------- metrics
def test_identical_labelling_under_other_names_is_perfect():
    rng = np.random.default_rng(0)
    chars = rng.integers(0, 6, size=2000)
    codes = np.array([17, 3, 250, 9, 41, 77])[chars]  # a one-to-one renaming
    m = label_quality(chars, codes)
    assert m["pnmi"] == pytest.approx(1.0, abs=1e-6)
    assert m["char_purity"] == pytest.approx(1.0) and m["cluster_purity"] == pytest.approx(1.0)
    assert m["codes_used"] == 6 and m["frames"] == 2000
    assert m["pnmi_chance"] < 0.01


def test_independent_codes_carry_no_information():
    rng = np.random.default_rng(1)
    chars = rng.choice(4, size=200_000, p=[0.4, 0.3, 0.2, 0.1])
    codes = rng.integers(0, 8, size=chars.size)
    m = label_quality(chars, codes)
    assert m["pnmi"] < 1e-3
    assert m["char_purity"] == pytest.approx(0.4, abs=0.01)  # majority vote can only pick the commonest char
    assert m["cluster_purity"] == pytest.approx(1 / 8, abs=0.01)
    assert m["code_perplexity"] == pytest.approx(8, rel=0.01)


def test_chance_level_exposes_the_bias_of_many_codes_on_few_frames():
    rng = np.random.default_rng(3)
    chars = rng.integers(0, 20, size=3000)
    unrelated = label_quality(chars, rng.integers(0, 2048, size=3000))
    assert unrelated["pnmi"] > 0.5  # the plug-in estimate alone would call these codes informative
    assert abs(unrelated["pnmi"] - unrelated["pnmi_chance"]) < 0.02
    assert abs(unrelated["char_purity"] - unrelated["char_purity_chance"]) < 0.03
    related = label_quality(chars, chars * 100 + rng.integers(0, 100, size=3000))  # 100 private codes per char
    assert related["pnmi"] == pytest.approx(1.0, abs=1e-6) and related["pnmi"] - related["pnmi_chance"] > 0.2


def test_known_answer_of_a_small_joint_table():
    # frames: (a, 0) (a, 0) (b, 0) (b, 1)
    m = label_quality(np.array(["a", "a", "b", "b"]), np.array([0, 0, 0, 1]))
    mi = 0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.25))
    assert m["mi"] == pytest.approx(mi, abs=1e-6)
    assert m["pnmi"] == pytest.approx(mi / math.log(2), abs=1e-6)
    assert m["char_purity"] == pytest.approx(0.75)  # code 0 -> a (2 of 3 frames), code 1 -> b (1 of 1)
    assert m["cluster_purity"] == pytest.approx(0.75)  # a -> code 0 (2 of 2), b -> either (1 of 2)
    assert m["code_perplexity"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-6)


def test_codes_that_split_each_char_keep_pnmi_but_not_cluster_purity():
    chars = np.repeat(np.arange(3), 100)
    codes = chars * 2 + np.tile([0, 1], 150)  # every char spread evenly over two codes of its own
    m = label_quality(chars, codes)
    assert m["pnmi"] == pytest.approx(1.0, abs=1e-6) and m["char_purity"] == pytest.approx(1.0)
    assert m["cluster_purity"] == pytest.approx(0.5)


def test_renaming_codes_or_chars_changes_nothing():
    rng = np.random.default_rng(2)
    chars = rng.integers(0, 5, size=5000)
    codes = np.where(rng.random(5000) < 0.6, chars * 3, rng.integers(0, 40, size=5000))
    base = label_quality(chars, codes)
    permuted = label_quality(rng.permutation(5)[chars], rng.permutation(40)[codes])
    for key, value in base.items():
        assert permuted[key] == pytest.approx(value), key
    assert 0.2 < base["pnmi"] < 0.9


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="one of each per frame"):
        label_quality(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="no frames"):
        label_quality(np.zeros(0), np.zeros(0))


# --------------------------------------------------------------------------- frame labels
def test_blank_frames_take_the_preceding_char_and_leading_blanks_the_first():
    blank = 0
    labels, was_blank = frame_labels_from_alignment([0, 0, 5, 5, 0, 0, 7, 0, 5, 0], blank)
    assert labels.tolist() == [5, 5, 5, 5, 5, 5, 7, 7, 5, 5]
    assert was_blank.tolist() == [True, True, False, False, True, True, False, True, False, True]
    with pytest.raises(ValueError, match="no non-blank"):
        frame_labels_from_alignment([0, 0, 0], blank)


def test_frame_counts_may_differ_by_one_and_are_trimmed():
    labels, codes, diff = match_frames(np.arange(10), np.arange(11), "test utterance 3")
    assert len(labels) == len(codes) == 10 and diff == 1
    with pytest.raises(ValueError, match="test utterance 3: the aligner has 10 frames and the pretrained model 12"):
        match_frames(np.arange(10), np.arange(12), "test utterance 3")


def test_forced_alignment_follows_the_emissions():
    # 8 frames, vocabulary {0: blank, 1, 2, 3}; the emissions favour 1 1 0 2 0 0 2 3
    path = [1, 1, 0, 2, 0, 0, 2, 3]
    emissions = torch.full((8, 4), -5.0)
    emissions[torch.arange(8), torch.tensor(path)] = -0.1
    alignment = force_align(emissions.log_softmax(-1), [1, 2, 2, 3], blank=0)
    assert alignment.tolist() == path
    with pytest.raises(ValueError, match="do not fit in 3 frames"):
        force_align(emissions[:3].log_softmax(-1), [1, 2, 2], blank=0)


# --------------------------------------------------------------------------- codes
@pytest.mark.parametrize("extra", [{}, {"enhanced_centering": 0.9}, {"anchor_num_codebooks": 2}])
def test_frame_codes_are_the_labels_forward_trains_on(extra):
    from birq_fairseq.models.birq import BirqConfig, BirqModel

    torch.manual_seed(0)
    # unbalanced codes: the evaluation-mode forward does not balance (the balanced probe codes are
    # checked in test_label_generator.py)
    model = BirqModel(BirqConfig(**tiny_model_overrides(enhanced_sinkhorn_iters=0, **extra))).eval()
    with torch.no_grad():  # off the initialisation (whose layer norms are identities)
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    if model.enhanced_centering is not None:  # a centre that moves the argmax
        model.enhanced_centering.center.normal_(0, 3.0)
    source = torch.randn(2, 16000)
    padding_mask = torch.zeros(2, 16000, dtype=torch.bool)
    padding_mask[1, 11000:] = True
    codes, lengths = frame_codes(model, source, padding_mask)

    steps = codes["anchor" if "anchor" in codes else "anchor.0"].shape[1]
    fixed = torch.rand(2, steps) < 0.5
    fixed &= torch.arange(steps)[None] < lengths[:, None]
    model.time_mask = lambda step_padding: fixed  # forward's labels on frames we choose
    with torch.no_grad():
        out = model(source, padding_mask)
    anchors = [name for name in stream_names(model) if name.startswith("anchor")]
    for i, name in enumerate(anchors):
        assert torch.equal(codes[name][fixed], out["anchor_labels"][:, i])
    assert torch.equal(codes["enhanced"][fixed], out["enhanced_code_logits"][:, 0].argmax(-1))
    assert lengths.tolist() == [24, 16]  # (16000 - 400) // 160 + 1 = 98 -> 96 / 4; (11000 - 400) // 160 + 1 = 67 -> 64 / 4


def test_best_rq_has_only_the_anchor_stream():
    from birq_fairseq.models.birq import BirqConfig, BirqModel

    model = BirqModel(BirqConfig(**tiny_model_overrides(enhanced_stream=False))).eval()
    codes, _ = frame_codes(model, torch.randn(1, 8000), None)
    assert list(codes) == stream_names(model) == ["anchor"]


# --------------------------------------------------------------------------- end to end
def frames_of(num_samples: int) -> int:
    """40 ms encoder frames of a clip: 25 ms / 10 ms filterbank frames, rounded down to 4 of them."""
    fbank = (num_samples - 400) // 160 + 1
    return fbank // 4


@pytest.mark.e2e
def test_probe_command_on_tiny_pretraining_and_finetuned_checkpoints(tmp_path):
    from test_finetune_e2e import BIN, PKG, REPO, finetune, make_tiny_corpus, run

    data = make_tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "pretrain"
    run([BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples" / "pretrain", "--config-name", "tiny_birq",
         f"common.user_dir={PKG}", f"task.data={data}", f"checkpoint.save_dir={out}", f"hydra.run.dir={out}/hydra",
         "optimization.max_update=4", "++dataset.disable_validation=true", "++task.min_sample_size=1000",
         "checkpoint.save_interval_updates=2", "checkpoint.keep_interval_updates=-1"], tmp_path)
    saved = sorted(glob.glob(str(out / "checkpoint_*_*.pt")))
    assert len(saved) == 2, saved
    aligner = finetune(tmp_path, data, out / "checkpoint_last.pt")

    result_path = tmp_path / "probe.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "birq_fairseq", "probe", "--pretrained", *saved[::-1], "--aligner", str(aligner),
           "--data", str(data), "--subset", "test", "--json", str(result_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(result_path.read_text())

    assert [r["num_updates"] for r in results] == [2, 4]  # ordered by update, whatever the argument order
    with open(data / "test.tsv") as f:
        f.readline()
        expected_frames = sum(frames_of(int(line.split("\t")[1])) for line in f)
    for r in results:
        assert r["utterances"] == 6 and not r["skipped"]
        assert r["frames"] == expected_frames and r["trimmed_frames"] == 0  # every frame, nothing dropped
        assert 0.0 <= r["blank_fraction"] < 1.0
        assert r["enhanced_layer"] == 3  # round(0.7 * 4)
        assert set(r["streams"]) == {"anchor", "enhanced"}
        for m in r["streams"].values():
            assert 0.0 <= m["pnmi"] <= 1.0 and 0.0 < m["char_purity"] <= 1.0 and 0.0 < m["cluster_purity"] <= 1.0
            assert 1.0 <= m["code_perplexity"] <= m["codes_used"] <= 256 and m["frames"] == r["frames"]
            assert 0.0 <= m["pnmi_chance"] <= 1.0 and 0.0 < m["char_purity_chance"] <= 1.0
    # the anchor codes come from the frozen quantizer on the filterbank: training cannot change them
    assert results[0]["streams"]["anchor"] == results[1]["streams"]["anchor"]
    assert "PNMI" in proc.stdout and "enhanced" in proc.stdout

    # a finetuned checkpoint where a pretraining one is needed: one line naming it, before any work
    proc = subprocess.run([sys.executable, "-m", "birq_fairseq", "probe", "--pretrained", str(aligner),
                           "--aligner", str(aligner), "--data", str(data)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert f"{aligner} is a finetuned checkpoint, not a BiRQ/BEST-RQ pretraining checkpoint" in proc.stderr
