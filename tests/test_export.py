"""torch.export, TorchScript and ONNX export of the BiRQ encoder: outputs match the fairseq model's.

Tolerances (max |difference| on valid frames, features of scale ~1-5): torch.export and
TorchScript 1e-5 (the same kernels; measured 0 and ~1e-6), ONNX 3e-5 (onnxruntime's kernels;
measured ~3e-6 on the tiny models and ~6e-6 on a base-shaped 12x768 one).
"""

import os
import subprocess

import numpy as np
import onnxruntime  # the `export` extra, which make setup (scripts/setup.sh) installs
import pytest
import torch

from birq_fairseq.export import (
    BirqFeatureEncoder,
    example_input,
    export_onnx,
    export_program,
    export_torchscript,
    min_program_samples,
)
from birq_fairseq.models.birq import BirqConfig, BirqModel
from conftest import BIN, tiny_model_overrides

PROGRAM_TOL, TS_TOL, ONNX_TOL = 1e-5, 1e-5, 3e-5
FORMATS = ["program", "torchscript", "onnx"]
# (B,) clip lengths in samples, none of them the trace example's (24000, 16000)
BATCHES = [(16000,), (9000,), (40000, 20000, 12000), (7000, 7000)]


def tiny_encoder(output_layer, **overrides):
    torch.manual_seed(0)
    model = BirqModel(BirqConfig(**tiny_model_overrides(**overrides)))
    model.remove_pretraining_modules()
    return BirqFeatureEncoder(model, output_layer).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 4-layer model's layer-2 features, exported to the three formats once."""
    out = tmp_path_factory.mktemp("export")
    encoder = tiny_encoder(output_layer=2)
    export_program(encoder, str(out / "enc.pt2"))
    export_torchscript(encoder, str(out / "enc.pt"))
    export_onnx(encoder, str(out / "enc.onnx"))
    program = torch.export.load(str(out / "enc.pt2")).module()  # the saved files, not the in-memory ones
    loaded = torch.jit.load(str(out / "enc.pt"))
    session = onnxruntime.InferenceSession(str(out / "enc.onnx"), providers=["CPUExecutionProvider"])

    def run_program(source, padding_mask):  # called with gradients enabled: the program computes none
        x, pad = program(source, padding_mask)
        assert not x.requires_grad
        return x.numpy(), pad.numpy()

    def run_torchscript(source, padding_mask):
        with torch.no_grad():
            return tuple(t.numpy() for t in loaded(source, padding_mask))

    def run_onnx(source, padding_mask):
        return tuple(session.run(None, {"source": source.numpy(), "padding_mask": padding_mask.numpy()}))

    return encoder, {"program": (run_program, PROGRAM_TOL), "torchscript": (run_torchscript, TS_TOL),
                     "onnx": (run_onnx, ONNX_TOL)}


def reference(encoder, source, padding_mask):
    with torch.no_grad():
        x, pad = encoder(source, padding_mask)
    return x.numpy(), pad.numpy()


@pytest.mark.parametrize("fmt", FORMATS)
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


@pytest.mark.parametrize("fmt", FORMATS)
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
    program = export_program(encoder, str(tmp_path / "enc.pt2")).module()
    source, padding_mask = example_input((12000, 20000), seed=3)
    ref_x, ref_pad = reference(encoder, source, padding_mask)
    for exported, tol in ((traced, TS_TOL), (program, PROGRAM_TOL)):
        with torch.no_grad():
            x, pad = exported(source, padding_mask)
        np.testing.assert_array_equal(pad.numpy(), ref_pad)
        assert np.abs(x.numpy()[~ref_pad] - ref_x[~ref_pad]).max() <= tol
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
    program = export_program(encoder, str(tmp_path / "enc.pt2")).module()
    session = onnxruntime.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    for lengths in ((30000, 12000), (17000,)):  # a padded batch, and one clip (the program's batch of 1)
        source, padding_mask = example_input(lengths, seed=3)
        ref_x, ref_pad = reference(encoder, source, padding_mask)
        with torch.no_grad():
            ts_x, ts_pad = traced(source, padding_mask)
            pr_x, pr_pad = program(source, padding_mask)
        onnx_x, onnx_pad = session.run(None, {"source": source.numpy(), "padding_mask": padding_mask.numpy()})
        valid = ~ref_pad
        assert np.array_equal(ts_pad.numpy(), ref_pad) and np.array_equal(onnx_pad, ref_pad)
        assert np.array_equal(pr_pad.numpy(), ref_pad)
        assert np.abs(ts_x.numpy()[valid] - ref_x[valid]).max() <= TS_TOL
        assert np.abs(onnx_x[valid] - ref_x[valid]).max() <= ONNX_TOL
        assert np.abs(pr_x.numpy()[valid] - ref_x[valid]).max() <= PROGRAM_TOL


def test_program_length_range_and_the_model_left_as_it_was(exported, tmp_path):
    """The program takes any batch padded to two 40 ms frames or more, and refuses shorter ones;
    exporting it leaves the model as it was (no hooks or method overrides left behind)."""
    encoder, runners = exported
    run, tol = runners["program"]
    shortest = min_program_samples(encoder.model)
    assert shortest == 1520  # 400-sample window + 7 hops of 160: 8 filterbank frames, two 40 ms steps
    for lengths in ((shortest,), (shortest + 100, shortest), (shortest + 700,)):
        source, padding_mask = example_input(lengths, seed=5)
        ref_x, ref_pad = reference(encoder, source, padding_mask)
        x, pad = run(source, padding_mask)
        np.testing.assert_array_equal(pad, ref_pad)
        assert np.abs(x[~ref_pad] - ref_x[~ref_pad]).max() <= tol
    with pytest.raises(AssertionError, match=f">= {shortest}"):
        run(*example_input((shortest - 1,), seed=5))
    assert "run_encoder" not in vars(encoder.model)
    assert not [m for m in encoder.modules() if m._forward_pre_hooks and m is not encoder.model.encoder.pos_conv[0]]


def test_bad_layer_and_unpadded_trace_example_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--layer 5 is outside the encoder: it has 4 layers"):
        tiny_encoder(output_layer=5)
    encoder = tiny_encoder(output_layer=1)
    unpadded = (torch.randn(2, 16000), torch.zeros(2, 16000, dtype=torch.bool))
    with pytest.raises(ValueError, match="padded example"):
        export_torchscript(encoder, str(tmp_path / "x.pt"), unpadded)


@pytest.mark.e2e
def test_export_command_on_a_pretraining_checkpoint(pretrained_checkpoint, tmp_path):
    """All three formats, and no deprecation warning on the way: the console runs with Python's
    default warning filters (run_console turns warnings off), so torch's FutureWarnings would show."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    out = subprocess.run([os.path.join(BIN, "birq-fairseq"), "export", "--path", pretrained_checkpoint, "--layer", "2",
                          "--out", str(tmp_path / "b.pt2"), "--torchscript", str(tmp_path / "b.pt"),
                          "--onnx", str(tmp_path / "b.onnx")],
                         cwd=str(tmp_path), env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "torch.export:" in out.stdout and "TorchScript:" in out.stdout and "ONNX:" in out.stdout, out.stdout
    assert "Warning" not in out.stderr and "deprecated" not in out.stderr, out.stderr[-4000:]
    assert all(os.path.getsize(tmp_path / name) > 0 for name in ("b.pt2", "b.pt", "b.onnx"))
    # the lines of the README
    wav = np.random.default_rng(0).standard_normal(20000).astype(np.float32) * 0.1
    source, padding_mask = torch.from_numpy(wav)[None], torch.zeros(1, len(wav), dtype=torch.bool)
    feats, pad = torch.export.load(str(tmp_path / "b.pt2")).module()(source, padding_mask)
    ts_feats, ts_pad = torch.jit.load(str(tmp_path / "b.pt"))(source, padding_mask)
    session = onnxruntime.InferenceSession(str(tmp_path / "b.onnx"))
    onnx_feats, onnx_pad = session.run(None, {"source": wav[None], "padding_mask": np.zeros((1, len(wav)), bool)})
    frames = ((len(wav) - 400) // 160 + 1) // 4  # 40 ms steps of whole 4-frame groups
    assert tuple(feats.shape) == tuple(ts_feats.shape) == onnx_feats.shape == (1, frames, 96)
    assert not pad.any() and not ts_pad.any() and not onnx_pad.any()
    assert np.abs(onnx_feats - feats.numpy()).max() <= ONNX_TOL
    assert np.abs(ts_feats.numpy() - feats.numpy()).max() <= TS_TOL


@pytest.mark.e2e
def test_export_command_errors_name_the_problem(pretrained_checkpoint, tmp_path, capsys):
    from birq_fairseq.cli import main

    assert main(["export", "--path", pretrained_checkpoint, "--layer", "9", "--out", str(tmp_path / "x.pt2"),
                 "--onnx", str(tmp_path / "x.onnx")]) == 1
    assert "--layer 9 is outside the encoder: it has 4 layers" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.pt2").exists()
