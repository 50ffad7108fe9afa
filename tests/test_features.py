"""Layer features for k-means and probes: HuBERT's simple_kmeans format, resumable shards.

fairseq's own examples/hubert/simple_kmeans/learn_kmeans.py and dump_km_label.py (shipped in
the installed fairseq package) run unchanged on what ``birq-fairseq dump-features`` writes.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from birq_fairseq.features import NpyRowWriter, dump_features, load_birq_encoder, shard_paths, shard_utterances
from conftest import run_console

SIMPLE_KMEANS = os.path.join(os.path.dirname(__import__("fairseq").__file__), "examples", "hubert", "simple_kmeans")


def test_npy_rows_written_in_pieces_load_as_one_array(tmp_path):
    rng = np.random.default_rng(0)
    pieces = [rng.standard_normal((n, 7)).astype(np.float32) for n in (5, 1, 12, 3)]
    writer = NpyRowWriter(str(tmp_path / "f.npy"))
    for piece in pieces:
        writer.append(piece)
    writer.close()
    loaded = np.load(tmp_path / "f.npy", mmap_mode="r")
    assert loaded.dtype == np.float32 and loaded.shape == (21, 7)
    np.testing.assert_array_equal(loaded, np.concatenate(pieces))
    writer = NpyRowWriter(str(tmp_path / "g.npy"))
    writer.append(pieces[0])
    with pytest.raises(ValueError, match="rows of width 3 after width 7"):
        writer.append(np.zeros((2, 3)))


def test_bad_manifest_lines_of_the_shard_stop_naming_file_and_line(tmp_path):
    from audio_fixtures import write_manifest

    write_manifest(str(tmp_path), "train", 4, seed=0)
    tsv = str(tmp_path / "train.tsv")
    lines = open(tsv).read().splitlines()
    lines[4] = "wav/missing.wav\t16000"  # manifest line 5: the last utterance, in shard 1 of 2
    open(tsv, "w").write("\n".join(lines) + "\n")
    assert len(shard_utterances(tsv, 2, 0, 16000)) == 2  # shard 0 is fine
    with pytest.raises(ValueError, match=rf"{tsv}:5: wav/missing.wav: file not found"):
        shard_utterances(tsv, 2, 1, 16000)
    with pytest.raises(ValueError, match="shard 0 of 9 is empty: the manifest has only 4 utterances"):
        shard_utterances(tsv, 9, 0, 16000)
    with pytest.raises(ValueError, match=r"--rank 2 must be in 0..1"):
        shard_utterances(tsv, 2, 2, 16000)


def dump(checkpoint, data, feat_dir, rank, nshard=2, layer=2, extra=()):
    return run_console("birq-fairseq", ["dump-features", "--path", checkpoint, "--data", data, "--split", "train",
                                        "--layer", str(layer), "--nshard", str(nshard), "--rank", str(rank),
                                        "--feat-dir", feat_dir] + list(extra), cwd=feat_dir).stdout


def run_fairseq_script(name, *args, cwd):
    """One of fairseq's simple_kmeans scripts, unchanged, as HuBERT's README runs them."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(SIMPLE_KMEANS, name)] + [str(a) for a in args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.e2e
def test_dumped_features_feed_fairseqs_kmeans_and_match_extract_features(pretrained_checkpoint, synth_data,
                                                                          tmp_path):
    feat_dir = str(tmp_path / "feats")
    os.makedirs(feat_dir)
    for rank in (0, 1):
        assert f"shard {rank} of 2: 4 utterances" in dump(pretrained_checkpoint, synth_data, feat_dir, rank)
    tsv = os.path.join(synth_data, "train.tsv")
    root, *entries = open(tsv).read().splitlines()
    lengths = [int(n) for p in shard_paths(feat_dir, "train", 2, 0)[1:] + shard_paths(feat_dir, "train", 2, 1)[1:]
               for n in open(p).read().split()]
    assert len(lengths) == len(entries) == 8

    # The same features the Python way of the README: fairseq's loader once birq_fairseq is imported.
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([pretrained_checkpoint])
    model = models[0].eval()
    feats = np.load(shard_paths(feat_dir, "train", 2, 1)[0])
    offset = 0
    for k, line in enumerate(entries[4:]):
        wav, _ = sf.read(os.path.join(root, line.split("\t")[0]), dtype="float32")
        with torch.no_grad():
            x = model.extract_features(source=torch.from_numpy(wav)[None], padding_mask=None, layer=1)["x"][0]
        n = lengths[4 + k]
        assert x.shape == (n, 96)
        np.testing.assert_allclose(feats[offset:offset + n], x.numpy(), atol=1e-5)
        offset += n
    assert offset == len(feats)

    # fairseq's k-means scripts, unchanged
    run_fairseq_script("learn_kmeans.py", feat_dir, "train", 2, tmp_path / "km.bin", 5, "--n_init", 2,
                       "--percent", 0.5, cwd=str(tmp_path))
    for rank in (0, 1):
        run_fairseq_script("dump_km_label.py", feat_dir, "train", tmp_path / "km.bin", 2, rank, tmp_path / "lab",
                           cwd=str(tmp_path))
    labels = [line.split() for rank in (0, 1) for line in open(tmp_path / "lab" / f"train_{rank}_2.km")]
    assert [len(lab) for lab in labels] == lengths
    codes = {int(c) for lab in labels for c in lab}
    assert codes <= set(range(5)) and len(codes) > 1


@pytest.mark.e2e
def test_shards_resume_skip_finished_and_redo_partial(pretrained_checkpoint, synth_data, tmp_path):
    feat_dir = str(tmp_path / "feats")

    def dump_shard(rank):  # what `birq-fairseq dump-features` runs, in this process
        return dump_features(pretrained_checkpoint, synth_data, "train", 2, 2, rank, feat_dir, progress=False)

    assert not dump_shard(0)["skipped"]
    npy0, len0 = shard_paths(feat_dir, "train", 2, 0)
    finished = (open(npy0, "rb").read(), open(len0).read(), os.stat(npy0).st_mtime_ns)

    # a rerun skips the finished shard and leaves it as it was
    assert dump_shard(0)["skipped"]
    assert os.stat(npy0).st_mtime_ns == finished[2]

    # shard 1 interrupted mid-write: partial files under their .partial names, nothing final
    npy1, len1 = shard_paths(feat_dir, "train", 2, 1)
    with open(npy1 + ".partial", "wb") as f:
        f.write(b"\x93NUMPY truncated")
    with open(len1 + ".partial", "w") as f:
        f.write("31\n")
    result = dump_shard(1)
    assert not result["skipped"] and not os.path.exists(npy1 + ".partial") and not os.path.exists(len1 + ".partial")
    assert len(open(len1).read().split()) == 4
    assert sum(int(n) for n in open(len1).read().split()) == np.load(npy1).shape[0] == result["frames"]

    # a shard whose .len does not add up (e.g. copied in from elsewhere) is redone, not trusted
    with open(len1, "w") as f:
        f.write("1\n2\n")
    assert not dump_shard(1)["skipped"]
    assert len(open(len1).read().split()) == 4

    # the other shard's files were never touched
    assert (open(npy0, "rb").read(), open(len0).read(), os.stat(npy0).st_mtime_ns) == finished


@pytest.mark.e2e
def test_finetuned_checkpoint_features_are_its_encoders(e2e_checkpoints, tmp_path):
    """A wav2vec_ctc checkpoint: the features are those of the encoder inside the finetuned model."""
    _, data, _, ckpt = e2e_checkpoints
    ckpt = str(ckpt)
    encoder, task_cfg = load_birq_encoder(ckpt)
    assert task_cfg.sample_rate == 16000 and not task_cfg.normalize

    from fairseq import checkpoint_utils

    from birq_fairseq.safe_globals import allow_fairseq_checkpoint_globals

    allow_fairseq_checkpoint_globals()
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([ckpt], arg_overrides={"data": str(data)})
    inner = models[0].eval().w2v_encoder.w2v_model
    wav = torch.randn(1, 20000) * 0.1
    with torch.no_grad():
        for layer in (0, 1, None):
            ours = encoder.extract_features(wav, None, layer=layer)["x"]
            theirs = inner.extract_features(wav, None, layer=layer)["x"]
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # and the command line takes it
    feat_dir = str(tmp_path / "feats")
    os.makedirs(feat_dir)
    out = run_console("birq-fairseq", ["dump-features", "--path", ckpt, "--data", str(data), "--split", "test",
                                       "--layer", "1", "--feat-dir", feat_dir], cwd=feat_dir).stdout
    num_test = len(open(os.path.join(data, "test.tsv")).read().splitlines()) - 1
    assert f"shard 0 of 1: {num_test} utterances" in out


@pytest.mark.e2e
def test_wrong_input_gives_one_line_naming_it(pretrained_checkpoint, synth_data, tmp_path, capsys):
    from birq_fairseq.cli import main

    def fails(*args):
        assert main(["dump-features", "--path", pretrained_checkpoint, "--data", synth_data,
                     "--feat-dir", str(tmp_path)] + list(args)) == 1
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "--layer 7 is outside the encoder: it has 4 layers" in fails("--split", "train", "--layer", "7")
    assert "manifest not found: " + os.path.join(synth_data, "nope.tsv") in fails("--split", "nope")
    assert os.listdir(tmp_path) == []
