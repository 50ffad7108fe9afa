"""SUPERB-style frozen evaluation (``birq-fairseq superb``), phoneme labels, and the s3prl upstream.

On the tone corpus of tests/test_finetune_e2e.py (each letter a tone, so characters are
learnable from the audio; phonemes here are one pseudo-phoneme per letter) and a tiny BiRQ
model written as a fairseq checkpoint directly (random init: the evaluation, not the model, is
under test). The s3prl expert is tested against s3prl's interface contract, not through s3prl
(not installed: 0.4.18 imports torchaudio APIs that 2.11 removed).
"""

import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import birq_fairseq  # noqa: F401  registers the model, installs the checkpoint errors
from birq_fairseq import superb, upstream as up
from birq_fairseq.data.phonemes import normalize_phonemes
from birq_fairseq.models.birq import BirqConfig, BirqModel
from birq_fairseq.s3prl_upstream import UpstreamExpert, hubconf
from conftest import tiny_model_overrides

PSEUDO_PHONEMES = {"A": "eɪ", "B": "b", "C": "s", "D": "d", "E": "iː"}
FINETUNED_PREFIX = "w2v_encoder.w2v_model."


# --------------------------------------------------------------------------- fixtures
def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return BirqModel(BirqConfig(**tiny_model_overrides(**overrides)))


def save_checkpoint(path, model, finetuned=False):
    """``model`` as fairseq-hydra-train saves it: a pretraining, or a wav2vec_ctc-finetuned checkpoint."""
    model_cfg = dict(OmegaConf.to_container(OmegaConf.structured(model.cfg), resolve=True, enum_to_str=True),
                     _name="birq")
    task = {"_name": "birq_pretraining", "sample_rate": 16000, "normalize": False}
    weights = model.state_dict()
    if finetuned:  # wav2vec_ctc holds the encoder without its pretraining modules, under a prefix
        model_cfg = {"_name": "wav2vec_ctc", "w2v_path": "pt.pt", "w2v_args": {"model": model_cfg, "task": task}}
        task = dict(task, _name="birq_finetuning")
        encoder = BirqModel(model.cfg)  # a copy (weight_norm modules do not deepcopy)
        encoder.load_state_dict(model.state_dict())
        encoder.remove_pretraining_modules()
        weights = {FINETUNED_PREFIX + k: v for k, v in encoder.state_dict().items()}
        weights["w2v_encoder.proj.weight"] = torch.zeros(7, model.cfg.encoder_embed_dim)
    torch.save({"cfg": {"model": model_cfg, "task": task}, "model": weights, "extra_state": {},
                "optimizer_history": [{"criterion_name": "x", "best_loss": None, "num_updates": 0}]}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Tone corpus (24 train, 6 valid, 6 test) with .ltr/.wrd, dict.ltr.txt and .phn (no dict.phn.txt)."""
    from test_finetune_e2e import make_tiny_corpus

    data = make_tiny_corpus(tmp_path_factory.mktemp("superb") / "corpus")
    for split in ("train", "valid", "test"):
        words = (data / f"{split}.wrd").read_text().splitlines()
        (data / f"{split}.phn").write_text("".join(" ".join(PSEUDO_PHONEMES[c] for c in w if c != " ") + "\n"
                                                   for w in words))
    return str(data)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_best.pt", tiny_model())


FAST = superb.TrainConfig(epochs=8, batch_size=8, lr=1e-2, lstm_dim=16, seed=1)


@pytest.fixture(scope="module")
def result(corpus, checkpoint, tmp_path_factory):
    """Both tasks x both downstreams on the tiny checkpoint, once for the module."""
    cache = str(tmp_path_factory.mktemp("cache"))
    return superb.run_superb(checkpoint, corpus, "train", "valid", ["test"], tasks=("pr", "asr"),
                             downstreams=("linear", "bilstm"), cfg=FAST, cache=cache)


# --------------------------------------------------------------------------- the upstreams
def test_hidden_states_are_the_encoder_input_then_fairseqs_layer_results():
    model = tiny_model().eval()
    source = torch.randn(2, 12000)
    padding_mask = torch.zeros_like(source, dtype=torch.bool)
    padding_mask[1, 9000:] = True
    states, lengths = up.encoder_hidden_states(model, source, padding_mask)
    out = model.extract_features(source, padding_mask, mask=False)
    assert len(states) == len(model.encoder.layers) + 1
    assert all(h.shape == out["x"].shape for h in states)
    assert lengths.tolist() == (~out["padding_mask"]).sum(-1).tolist() == [((n - 400) // 160 + 1) // 4
                                                                            for n in (12000, 9000)]
    for h, (x, _, _) in zip(states[1:], out["layer_results"]):  # post-LN: layer outputs = layer_results
        torch.testing.assert_close(h, x.transpose(0, 1))
    torch.testing.assert_close(states[-1], out["x"])
    # pre-LN layers: the last state is the encoder output, after the final layer norm
    pre = tiny_model(layer_norm_first=True).eval()
    states, _ = up.encoder_hidden_states(pre, source, None)
    out = pre.extract_features(source, None, mask=False)
    torch.testing.assert_close(states[-1], out["x"])
    assert not torch.allclose(states[-1], out["layer_results"][-1][0].transpose(0, 1))


def test_finetuned_checkpoint_gives_the_pretrained_encoders_states(tmp_path):
    model = tiny_model(seed=3)
    pt = up.load_upstream(save_checkpoint(tmp_path / "pt.pt", model))
    ft = up.load_upstream(save_checkpoint(tmp_path / "ft.pt", model, finetuned=True))
    source = torch.randn(1, 8000)
    for a, b in zip(pt(source)[0], ft(source)[0]):
        torch.testing.assert_close(a, b)
    assert pt.num_hidden_states == 5 and pt.downsample_rate == 640 and pt.min_samples == 880


# --------------------------------------------------------------------------- the evaluation
def test_downstreams_learn_and_report_per_cer_wer_and_layer_weights(result, checkpoint):
    runs = {(r["task"], r["downstream"]): r for r in result["runs"]}
    assert set(runs) == {("pr", "linear"), ("pr", "bilstm"), ("asr", "linear"), ("asr", "bilstm")}
    assert result["hidden_states"] == 5 and result["hidden_size"] == 32 and result["layers"] == [0, 1, 2, 3, 4]
    for (task, name), run in runs.items():
        losses = [h["train_loss"] for h in run["history"]]
        assert len(losses) == FAST.epochs and losses[-1] < 0.8 * losses[0], (task, name, losses)  # it learns
        weights = run["layer_weights"]
        assert len(weights) == 5 and abs(sum(weights) - 1) < 1e-6 and min(weights) > 0
        test = run["test"]["test"]
        keys = {"per"} if task == "pr" else {"cer", "wer"}
        assert keys <= set(test) and keys <= set(run["valid"]) and test["utterances"] == 6
        assert 1 <= run["best_epoch"] <= FAST.epochs  # chosen on valid
        metric = superb.SELECTION_METRIC[task]
        assert run["valid"][metric] == min(h[f"valid_{metric}"] for h in run["history"])
    # the linear probe moved its layer weights away from equal
    assert max(runs[("asr", "linear")]["layer_weights"]) > 0.2 + 1e-3
    json.dumps(result)  # JSON-able as written by --json
    table = superb.format_table(result)
    assert "PER" in table and "CER" in table and "WER" in table and "layer weights pr/linear" in table
    assert result["vocabulary"]["asr"]["source"].endswith("dict.ltr.txt")
    assert result["vocabulary"]["pr"]["source"] == "the training labels"  # no dict.phn.txt in this corpus


def test_fbank_upstream(corpus, tmp_path):
    res = superb.run_superb("fbank", corpus, "train", "valid", ["test"], tasks=("pr",), cfg=FAST,
                            cache=str(tmp_path))
    assert res["hidden_states"] == 1 and res["hidden_size"] == 320
    run = res["runs"][0]
    assert run["layer_weights"] == [1.0]
    losses = [h["train_loss"] for h in run["history"]]
    assert losses[-1] < 0.5 * losses[0]
    assert run["test"]["test"]["per"] < 60  # tones are easy to tell apart in a filterbank
    assert os.path.basename(res["cache"]["dir"]).startswith("fbank-")


def test_features_are_cached_per_checkpoint_and_reused(corpus, checkpoint, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    cfg = superb.TrainConfig(epochs=1, batch_size=8)
    first = superb.run_superb(checkpoint, corpus, "train", "valid", ["test"], tasks=("asr",), cfg=cfg, cache=cache)
    assert set(first["cache"]["splits"].values()) == {"extracted"}

    def no_model(spec):
        raise AssertionError("the upstream was loaded although every split is cached")

    monkeypatch.setattr(up, "load_upstream", no_model)
    again = superb.run_superb(checkpoint, corpus, "train", "valid", ["test"], tasks=("pr",), downstreams=("bilstm",),
                              cfg=superb.TrainConfig(epochs=1, lstm_dim=8), cache=cache)
    assert set(again["cache"]["splits"].values()) == {"cached"} and again["cache"]["dir"] == first["cache"]["dir"]
    monkeypatch.undo()
    # cached rows are the extraction's: utterance 0 of valid, against the upstream run on it alone
    feats = superb.FeatureCache(cache, checkpoint, None).load(superb.Split.read(corpus, "valid"))
    split = superb.Split.read(corpus, "valid")
    wav = torch.from_numpy(superb.read_audio(split.paths[0], 16000))[None]
    states, _ = up.load_upstream(checkpoint)(wav)
    np.testing.assert_allclose(feats.utterance(0), torch.stack(states, 2)[0].numpy(), atol=1e-4)
    # a new layer set, or a rewritten checkpoint (new mtime), is another key
    assert superb.FeatureCache(cache, checkpoint, [0, 4]).dir != first["cache"]["dir"]
    st = os.stat(checkpoint)
    os.utime(checkpoint, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert superb.FeatureCache(cache, checkpoint, None).dir != first["cache"]["dir"]


def test_layer_subset(corpus, checkpoint, tmp_path):
    res = superb.run_superb(checkpoint, corpus, "train", "", ["test"], tasks=("pr",), layers=[4, 0],
                            cfg=superb.TrainConfig(epochs=1), cache=str(tmp_path))
    assert res["layers"] == [0, 4] and res["hidden_states"] == 2 and len(res["runs"][0]["layer_weights"]) == 2
    assert res["runs"][0]["valid"] is None and res["runs"][0]["best_epoch"] == 1  # no valid split: the last epoch


def run_cli(capsys, *args):
    from birq_fairseq import cli

    code = cli.main(["superb", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_wrong_checkpoint_gets_one_line(corpus, tmp_path, capsys):
    bare = tmp_path / "bare.pt"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, str(bare))
    other = tmp_path / "w2v.pt"
    torch.save({"cfg": {"model": {"_name": "wav2vec2"}, "task": {"_name": "audio_pretraining"}}, "model": {},
                "optimizer_history": [{"criterion_name": "x", "best_loss": None, "num_updates": 1}],
                "extra_state": {}}, str(other))
    for path, says in ((bare, "is not a fairseq checkpoint"), (other, "holds a 'wav2vec2' model"),
                       (tmp_path / "missing.pt", "upstream checkpoint not found")):
        code, out, err = run_cli(capsys, "--upstream", str(path), "--data", corpus, "--train", "train", "--test",
                                 "test", "--cache", str(tmp_path / "cache"), "--epochs", "1")
        assert code == 1 and out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("birq-fairseq superb: error: ") and str(path) in err and says in err


def test_cli_prints_a_table_and_writes_json(corpus, checkpoint, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code, out, err = run_cli(capsys, "--upstream", checkpoint, "--data", corpus, "--train", "train", "--test", "test",
                             "--task", "asr", "--epochs", "2", "--cache", str(tmp_path / "c"), "--json", str(out_json))
    assert code == 0, err
    assert "asr   linear" in out and "layer weights asr/linear:" in out
    saved = json.loads(out_json.read_text())
    assert saved["runs"][0]["test"]["test"]["cer"] >= 0 and len(saved["runs"][0]["history"]) == 2


def test_labels_are_checked_and_test_is_never_chosen_on(corpus, checkpoint, tmp_path):
    work = tmp_path / "data"
    shutil.copytree(corpus, work)
    os.remove(work / "test.phn")
    with pytest.raises(FileNotFoundError, match=r"test\.phn.*make_labels\.py .*--phonemes"):
        superb.run_superb(checkpoint, str(work), "train", "valid", ["test"], cache=str(tmp_path / "c"))
    assert not os.path.exists(tmp_path / "c")  # checked before any extraction
    (work / "train.ltr").write_text("A B |\n")
    with pytest.raises(ValueError, match=r"train\.ltr: 1 lines but .*24 utterances"):
        superb.run_superb(checkpoint, str(work), "train", "valid", ["test"], tasks=("asr",), cache=str(tmp_path))
    with pytest.raises(ValueError, match="nothing is chosen on test"):
        superb.run_superb(checkpoint, corpus, "train", "test", ["test"], cache=str(tmp_path))


def test_unreadable_audio_names_the_file_and_caches_nothing(corpus, checkpoint, tmp_path):
    work = tmp_path / "data"
    shutil.copytree(corpus, work)
    root, *entries = (work / "test.tsv").read_text().splitlines()
    shutil.copytree(root, tmp_path / "audio")  # the shared corpus's audio stays intact
    (work / "test.tsv").write_text("\n".join([str(tmp_path / "audio"), *entries]) + "\n")
    bad = Path(superb.Split.read(str(work), "test").paths[2])
    assert bad.parent == tmp_path / "audio"
    bad.write_bytes(b"not audio")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=rf"{bad}: unreadable audio"):
        superb.run_superb(checkpoint, str(work), "train", "", ["test"], tasks=("asr",), cache=str(cache))
    leftovers = [p.name for p in cache.rglob("*") if p.is_file() and p.name.startswith("test-")]
    assert leftovers == []  # neither finished nor half-written test features


def test_scores_and_greedy_decoding():
    assert superb.score("pr", [["a", "b", "c", "d"]], [["a", "c", "d", "e"]])["per"] == 50.0
    s = superb.score("asr", [list("AB|C|")], [list("AB|D|")])  # "AB C" vs "AB D"
    assert s["cer"] == 25.0 and s["wer"] == 50.0
    log_probs = torch.log(torch.eye(4)[[1, 1, 0, 1, 2, 2, 3]])[None]  # a a - a b b c -> a a b c
    assert superb.greedy_decode(log_probs, torch.tensor([7])) == [[1, 1, 2, 3]]
    assert superb.greedy_decode(log_probs, torch.tensor([3])) == [[1]]


# --------------------------------------------------------------------------- phoneme labels
def test_phoneme_normalisation():
    assert normalize_phonemes("h_ə_l_ˈoʊ w_ˈɜː_l_d") == ["h", "ə", "l", "oʊ", "w", "ɜː", "l", "d"]
    assert normalize_phonemes("ɪ_t__ h_ˌuː (fr)k_a(en)") == ["ɪ", "t", "h", "uː", "k", "a"]
    assert normalize_phonemes("d\u0361ʒ_ˈʌ_d\u200dʒ") == ["dʒ", "ʌ", "dʒ"]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_make_labels_writes_phonemes_and_their_dictionary(tmp_path):
    import subprocess

    from audio_fixtures import write_manifest

    write_manifest(str(tmp_path), "train", 2, seed=0, min_seconds=0.5, max_seconds=0.5)
    (tmp_path / "t.txt").write_text("The church is with us\nJudge, don't!\n")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "manifests" / "make_labels.py"), str(tmp_path / "train.tsv"),
                           "--transcripts", str(tmp_path / "t.txt"), "--phonemes", "--phoneme-dict"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, second = [line.split() for line in (tmp_path / "train.phn").read_text().splitlines()]
    assert first[-2:] == ["ʌ", "s"]  # "us", not the letters U S (transcripts are lower-cased first)
    assert "tʃ" in first and second[:3] == ["dʒ", "ʌ", "dʒ"]  # espeak's affricates are one phoneme
    assert not any(mark in p for p in first + second for mark in "ˈˌ|")
    symbols = [line.split()[0] for line in (tmp_path / "dict.phn.txt").read_text().splitlines()]
    assert sorted(symbols) == sorted(set(first + second))
    assert not (tmp_path / "dict.ltr.txt").exists()  # --phoneme-dict leaves the letter dictionary alone


# --------------------------------------------------------------------------- the s3prl upstream
@pytest.fixture(scope="module")
def expert(checkpoint):
    return hubconf.birq(ckpt=checkpoint, model_config=None, refresh=False).eval()


def test_expert_interface_shapes_and_downsample_rate(expert):
    wavs = [torch.randn(n) for n in (16000, 9000, 3000)]
    out = expert(wavs)
    states = out["hidden_states"]
    assert expert.get_downsample_rates("hidden_states") == 640
    assert len(states) == 5 and out["last_hidden_state"] is states[-1]
    # s3prl's S3PRLUpstream expects max(len) // rate + 1 frames (its _match_length)
    assert all(h.shape == (3, 16000 // 640 + 1, 32) and torch.isfinite(h).all() for h in states)
    assert isinstance(expert, torch.nn.Module)
    expert.train()  # s3prl sets train mode on upstreams it does not finetune: the expert stays frozen
    assert not expert.upstream.training and not any(p.requires_grad for p in expert.parameters())


def test_expert_pads_inputs_shorter_than_the_model_needs(expert):
    # s3prl pads to 800 samples, which gives this encoder zero frames; the expert pads to 880
    for n in (800, 100, 1):
        states = expert([torch.randn(n)])["hidden_states"]
        assert all(h.shape == (1, n // 640 + 1, 32) and torch.isfinite(h).all() for h in states)


def test_expert_batch_equals_one_by_one(expert):
    torch.manual_seed(1)
    wavs = [torch.randn(n) for n in (20000, 7000, 12345, 800)]
    batch = expert(wavs)["hidden_states"]
    for i, w in enumerate(wavs):
        alone = expert([w])["hidden_states"]
        frames = len(w) // 640 + 1  # what s3prl keeps of utterance i
        for b, a in zip(batch, alone):
            assert a.shape[1] == frames
            torch.testing.assert_close(b[i, :frames], a[0], atol=1e-4, rtol=1e-4)


def test_expert_fbank_and_missing_checkpoint():
    out = hubconf.birq_local(ckpt="fbank")([torch.randn(4000)])
    assert len(out["hidden_states"]) == 1 and out["hidden_states"][0].shape == (1, 4000 // 640 + 1, 320)
    with pytest.raises(ValueError, match="needs ckpt="):
        UpstreamExpert()


def test_run_downstream_registers_birq_with_s3prl(checkpoint, monkeypatch):
    """The launcher adds ``birq`` to s3prl.hub before s3prl's main parses ``-u birq`` (s3prl stubbed)."""
    from birq_fairseq.s3prl_upstream import run_downstream

    calls = []
    hub = types.ModuleType("s3prl.hub")
    runner = types.ModuleType("s3prl.run_downstream")
    runner.__file__ = "run_downstream.py"
    runner.main = lambda: calls.append((list(sys.argv), getattr(hub, "birq")(ckpt=sys.argv[-1], refresh=False)))
    package = types.ModuleType("s3prl")
    package.hub, package.run_downstream = hub, runner
    monkeypatch.setitem(sys.modules, "s3prl", package)
    monkeypatch.setitem(sys.modules, "s3prl.hub", hub)
    monkeypatch.setitem(sys.modules, "s3prl.run_downstream", runner)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert run_downstream.main(["-m", "train", "-u", "birq", "-k", checkpoint]) == 0
    (argv, expert), = calls
    assert argv[1:] == ["-m", "train", "-u", "birq", "-k", checkpoint] and isinstance(expert, UpstreamExpert)
