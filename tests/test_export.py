"""TorchScript and ONNX export of the BiRQ encoder: outputs match the fairseq model's.

Tolerances (max |difference| on valid frames, features of scale ~1-5): TorchScript 1e-5 (the
same kernels, frozen), ONNX 3e-5 (onnxruntime's kernels; measured ~3e-6 on the tiny models and
~6e-6 on a base-shaped 12x768 one).
"""

import os

import numpy as np
import onnxruntime  # the `export` extra, which make setup (scripts/setup.sh) installs
import pytest
import torch

from birq_fairseq.export import BirqFeatureEncoder, example_input, export_onnx, export_torchscript
from birq_fairseq.models.birq import BirqConfig, BirqModel
from conftest import run_console, tiny_model_overrides

TS_TOL, ONNX_TOL = 1e-5, 3e-5
# (B,) clip lengths in samples, none of them the trace example's (24000, 16000)
BATCHES = [(16000,), (9000,), (40000, 20000, 12000), (7000, 7000)]


def tiny_encoder(output_layer, **overrides):
    torch.manual_seed(0)
    model = BirqModel(BirqConfig(**tiny_model_overrides(**overrides)))
    model.remove_pretraining_modules()
    return BirqFeatureEncoder(model, output_layer).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 4-layer model's layer-2 features, exported to both formats once."""
    out = tmp_path_factory.mktemp("export")
    encoder = tiny_encoder(output_layer=2)
    export_torchscript(encoder, str(out / "enc.pt"))
    export_onnx(encoder, str(out / "enc.onnx"))
    loaded = torch.jit.load(str(out / "enc.pt"))  # the saved file, not the in-memory trace
    session = onnxruntime.InferenceSession(str(out / "enc.onnx"), providers=["CPUExecutionProvider"])

    def run_torchscript(source, padding_mask):
        with torch.no_grad():
            return tuple(t.numpy() for t in loaded(source, padding_mask))

    def run_onnx(source, padding_mask):
        return tuple(session.run(None, {"source": source.numpy(), "padding_mask": padding_mask.numpy()}))

    return encoder, {"torchscript": (run_torchscript, TS_TOL), "onnx": (run_onnx, ONNX_TOL)}


def reference(encoder, source, padding_mask):
    with torch.no_grad():
        x, pad = encoder(source, padding_mask)
    return x.numpy(), pad.numpy()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("lengths", BATCHES, ids=lambda l: "x".join(map(str, l)))
def test_exported_matches_fairseq_model(exported, fmt, lengths):
    encoder, runners = exported
    run, tol = runners[fmt]
    source, padding_mask = example_input(lengths, seed=len(lengths) + lengths[0])
    ref_x, ref_pad = reference(encoder, source, padding_mask)
    x, pad = run(source, padding_mask)
    assert x.shape == ref_x.shape and x.shape[-1] == 32
    np.testing.assert_array_equal(pad, ref_pad)
    valid = ~ref_pad
    # each clip has its own number of valid 40 ms frames
    assert valid.sum(1).tolist() == [((n - 400) // 160 + 1) // 4 for n in lengths]
    assert np.abs(x[valid] - ref_x[valid]).max() <= tol


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_padded_batch_features_equal_each_clips_own(exported, fmt):
    """Padding is honoured: a clip's valid frames in a padded batch are its features alone."""
    encoder, runners = exported
    run, tol = runners[fmt]
    lengths = (30000, 17000, 9500)
    source, padding_mask = example_input(lengths, seed=7)
    x, pad = run(source, padding_mask)
    for i, n in enumerate(lengths):
        alone_x, alone_pad = run(source[i:i + 1, :n], padding_mask[i:i + 1, :n])
        frames = int((~alone_pad).sum())
        assert int((~pad[i]).sum()) == frames and not alone_pad.any()
        assert np.abs(x[i, :frames] - alone_x[0]).max() <= max(tol, 1e-4)
        # and the exported clip alone matches the fairseq model on the clip alone
        ref_x, _ = reference(encoder, source[i:i + 1, :n], padding_mask[i:i + 1, :n])
        assert np.abs(alone_x - ref_x).max() <= tol


def test_final_output_and_pre_ln_encoder_export(tmp_path):
    """layer=None is the encoder's output: with pre-LN layers that includes the final layer norm."""
    encoder = tiny_encoder(output_layer=None, layer_norm_first=True)
    traced = export_torchscript(encoder, str(tmp_path / "enc.pt"))
    source, padding_mask = example_input((12000, 20000), seed=3)
    ref_x, ref_pad = reference(encoder, source, padding_mask)
    with torch.no_grad():
        x, pad = traced(source, padding_mask)
    np.testing.assert_array_equal(pad.numpy(), ref_pad)
    assert np.abs(x.numpy()[~ref_pad] - ref_x[~ref_pad]).max() <= TS_TOL
    # the final layer norm was applied: unit variance per frame (last layer's raw output is not)
    var = ref_x[~ref_pad].var(-1)
    assert np.allclose(var, 1.0, atol=0.05)


@pytest.mark.parametrize("overrides", [
    dict(feature_normalization="global"),
    dict(layer_type="conformer", depthwise_conv_kernel_size=5),
    dict(layer_type="conformer", pos_enc_type="rel_pos", attn_type="espnet", depthwise_conv_kernel_size=5),
], ids=["global_norm", "conformer", "conformer_rel_pos"])
def test_model_variants_export(tmp_path, overrides):
    torch.manual_seed(0)
    model = BirqModel(BirqConfig(**tiny_model_overrides(**overrides)))
    if overrides.get("feature_normalization") == "global":  # statistics come from training batches
        model.train()
        model(*example_input((20000, 16000), seed=9))
    model.remove_pretraining_modules()
    encoder = BirqFeatureEncoder(model, output_layer=2)
    traced = export_torchscript(encoder, str(tmp_path / "enc.pt"))
    export_onnx(encoder, str(tmp_path / "enc.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    source, padding_mask = example_input((30000, 12000), seed=3)
    ref_x, ref_pad = reference(encoder, source, padding_mask)
    with torch.no_grad():
        ts_x, ts_pad = traced(source, padding_mask)
    onnx_x, onnx_pad = session.run(None, {"source": source.numpy(), "padding_mask": padding_mask.numpy()})
    valid = ~ref_pad
    assert np.array_equal(ts_pad.numpy(), ref_pad) and np.array_equal(onnx_pad, ref_pad)
    assert np.abs(ts_x.numpy()[valid] - ref_x[valid]).max() <= TS_TOL
    assert np.abs(onnx_x[valid] - ref_x[valid]).max() <= ONNX_TOL


def test_bad_layer_and_unpadded_trace_example_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--layer 5 is outside the encoder: it has 4 layers"):
        tiny_encoder(output_layer=5)
    encoder = tiny_encoder(output_layer=1)
    unpadded = (torch.randn(2, 16000), torch.zeros(2, 16000, dtype=torch.bool))
    with pytest.raises(ValueError, match="padded example"):
        export_torchscript(encoder, str(tmp_path / "x.pt"), unpadded)


@pytest.mark.e2e
def test_export_command_on_a_pretraining_checkpoint(pretrained_checkpoint, tmp_path):
    out = run_console("birq-fairseq", ["export", "--path", pretrained_checkpoint, "--layer", "2",
                                       "--torchscript", str(tmp_path / "b.pt"), "--onnx", str(tmp_path / "b.onnx")],
                      cwd=str(tmp_path))
    assert "TorchScript:" in out.stdout and "ONNX:" in out.stdout, out.stdout
    assert os.path.getsize(tmp_path / "b.pt") > 0 and os.path.getsize(tmp_path / "b.onnx") > 0
    # the three lines of the README
    session = onnxruntime.InferenceSession(str(tmp_path / "b.onnx"))
    wav = np.random.default_rng(0).standard_normal(20000).astype(np.float32) * 0.1
    feats, pad = session.run(None, {"source": wav[None], "padding_mask": np.zeros((1, len(wav)), bool)})
    ts_feats, ts_pad = torch.jit.load(str(tmp_path / "b.pt"))(torch.from_numpy(wav)[None],
                                                               torch.zeros(1, len(wav), dtype=torch.bool))
    frames = ((len(wav) - 400) // 160 + 1) // 4  # 40 ms steps of whole 4-frame groups
    assert feats.shape == tuple(ts_feats.shape) == (1, frames, 96) and not pad.any() and not ts_pad.any()
    assert np.abs(feats - ts_feats.numpy()).max() <= ONNX_TOL


@pytest.mark.e2e
def test_export_command_errors_name_the_problem(pretrained_checkpoint, tmp_path, capsys):
    from birq_fairseq.cli import main

    assert main(["export", "--path", pretrained_checkpoint, "--layer", "9", "--onnx", str(tmp_path / "x.onnx")]) == 1
    assert "--layer 9 is outside the encoder: it has 4 layers" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "x.onnx").exists()
