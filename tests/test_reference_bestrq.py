"""The frozen evaluation of a built upstream object, and examples/reference/speechbrain_bestrq.py.

The first test needs no SpeechBrain: ``superb.run_superb`` takes an already-built
:class:`~birq_fairseq.upstream.FrozenUpstream` (a fixed random projection of fbank frames) on
tests/test_superb.py's tone corpus. The others train SpeechBrain's BEST-RQ for a few updates
(skipped without ``pip install -e .[reference]``).
"""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from birq_fairseq import superb, upstream as up
from test_superb import FAST, corpus  # noqa: F401  (corpus: the module-scoped tone-corpus fixture)

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference"
TINY = ["--layers", "2", "--d-model", "32", "--heads", "2", "--ffn", "64"]


class RandomProjection(up.FrozenUpstream):
    """Two hidden states: stacked fbank (B, T', 320) and a fixed random projection of it to 320."""

    def __init__(self, path: str, seed: int = 0):
        super().__init__()
        self.fbank = up.FbankUpstream()
        self.proj = torch.nn.Linear(self.fbank.hidden_size, self.fbank.hidden_size)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(seed))
        self.freeze()
        self.path = path
        for name in ("sample_rate", "normalize", "min_samples", "downsample_rate", "hidden_size"):
            setattr(self, name, getattr(self.fbank, name))
        self.num_hidden_states = 2

    @torch.no_grad()
    def forward(self, source, padding_mask=None):
        (stacked,), lengths = self.fbank(source, padding_mask)
        return [stacked, torch.tanh(self.proj(stacked))], lengths


def test_run_superb_takes_a_built_upstream(corpus, tmp_path):  # noqa: F811
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"stand-in checkpoint: its identity keys the cache")
    cache = str(tmp_path / "cache")
    res = superb.run_superb(RandomProjection(str(weights)), corpus, "train", "valid", ["test"], tasks=("pr", "asr"),
                            cfg=FAST, cache=cache)
    assert res["upstream"] == str(weights) and res["hidden_states"] == 2 and res["hidden_size"] == 320
    assert set(res["cache"]["splits"].values()) == {"extracted"}
    assert os.path.basename(res["cache"]["dir"]).startswith("weights-")
    for run in res["runs"]:
        assert abs(sum(run["layer_weights"]) - 1) < 1e-6 and len(run["layer_weights"]) == 2
        test = run["test"]["test"]
        assert ("per" in test) if run["task"] == "pr" else ("cer" in test and "wer" in test)
    json.dumps(res)
    # the key: the same object and file reuse the features; a rewritten file, or another class, does not
    again = superb.run_superb(RandomProjection(str(weights)), corpus, "train", "", ["test"], tasks=("pr",),
                              cfg=superb.TrainConfig(epochs=1), cache=cache)
    assert set(again["cache"]["splits"].values()) == {"cached"}
    assert superb.FeatureCache(cache, up.FbankUpstream(), None).dir != res["cache"]["dir"]
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert superb.FeatureCache(cache, RandomProjection(str(weights)), None).dir != res["cache"]["dir"]
    with pytest.raises(ValueError, match="hidden states 0..1"):
        superb.Evaluation(RandomProjection(str(weights)), corpus, cache, layers=[2])


# --------------------------------------------------------------------------- SpeechBrain's BEST-RQ
@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("speechbrain")
    sys.path.insert(0, str(REFERENCE))
    try:
        import speechbrain_bestrq
    finally:
        sys.path.remove(str(REFERENCE))
    return speechbrain_bestrq


def train_log(out):
    with open(os.path.join(out, "train.log")) as f:
        return [json.loads(line) for line in f]


def test_training_is_finite_and_resumes(reference, corpus, tmp_path, capsys):  # noqa: F811
    out = str(tmp_path / "run")
    args = ["--data", corpus, "--out", out, "--log-interval", "1", "--save-interval", "2"] + TINY
    assert reference.main(args + ["--updates", "3"]) == 0
    first = train_log(out)
    assert [r["update"] for r in first] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["loss"] > 0 for r in first)
    assert all(0 < r["audio_seconds_per_update"] <= 8.0 for r in first)  # at most --max-tokens of audio
    state = torch.load(os.path.join(out, "checkpoint_last.pt"), weights_only=False)
    assert state["update"] == 3 and not os.path.exists(os.path.join(out, "checkpoint_last.pt.tmp"))
    capsys.readouterr()
    assert reference.main(args + ["--updates", "5"]) == 0  # continues from update 3
    assert "resuming from" in capsys.readouterr().out
    log = train_log(out)
    assert [r["update"] for r in log] == [1, 2, 3, 4, 5]
    assert log[3]["audio_hours_seen"] > log[2]["audio_hours_seen"]
    assert torch.load(os.path.join(out, "checkpoint_last.pt"), weights_only=False)["update"] == 5
    assert reference.main(args + ["--updates", "5"]) == 0  # finished: skipped
    assert "skipping training" in capsys.readouterr().out and len(train_log(out)) == 5
    init = str(tmp_path / "init")  # --updates 0: the seeded initialisation, for the untrained row
    assert reference.main(["--data", corpus, "--out", init, "--updates", "0"] + TINY) == 0
    assert torch.load(os.path.join(init, "checkpoint_last.pt"), weights_only=False)["update"] == 0


def test_summary_reads_the_checkpoint_and_the_log(reference, corpus, tmp_path):  # noqa: F811
    out = str(tmp_path / "run")
    args = ["--data", corpus, "--out", out, "--log-interval", "1", "--save-interval", "1"] + TINY
    assert reference.main(args + ["--updates", "2"]) == 0
    with open(os.path.join(out, "train.log"), "a") as f:  # a row past the checkpoint (a run killed after it)
        f.write(json.dumps({"update": 3, "loss": 1.0, "accuracy": 0.5, "lr": 0.1, "wall": 9.0}) + "\n")
    frozen = {"runs": [{"task": "pr", "downstream": "linear"}]}
    s = reference.summarise(reference.parse_args(args + ["--updates", "2"]), frozen)
    log = train_log(out)
    assert s["updates"] == 2 and s["rung"].startswith("speechbrain_bestrq_") and s["rung"].endswith("_2_seed1")
    assert s["final_train"] == {k: log[1][k] for k in ("loss", "accuracy", "lr")}  # the checkpoint's row, not row 3
    assert s["audio_hours_seen"] == round(log[1]["audio_hours_seen"], 2) and s["superb"] == frozen
    with pytest.raises(SystemExit, match="--frozen-eval"):
        reference.main(args + ["--updates", "2", "--summary", str(tmp_path / "s.json")])


def test_upstream_states(reference, tmp_path):
    model = reference.SpeechBrainBestRQ(layers=2, d_model=32, heads=2, ffn=64)
    path = str(tmp_path / "checkpoint_last.pt")
    torch.save({"model": model.state_dict(), "model_config": model.config}, path)
    upstream = reference.SpeechBrainUpstream.from_checkpoint(path)
    assert upstream.num_hidden_states == 3 and upstream.hidden_size == 32 and upstream.downsample_rate == 640
    source = torch.randn(2, 12000)
    padding_mask = torch.zeros_like(source, dtype=torch.bool)
    padding_mask[1, 9000:] = True
    states, lengths = upstream(source, padding_mask)
    assert len(states) == 3 and all(h.shape == (2, 19, 32) for h in states)
    assert lengths.tolist() == [19, 15]  # ceil((S // 160 + 1) / 4)
    alone, _ = upstream(source[1:, :9000])  # a clip's states do not depend on its batch
    for h, a in zip(states, alone):
        torch.testing.assert_close(h[1, :15], a[0])
    assert upstream(torch.randn(1, upstream.min_samples))[1].tolist() == [1]
