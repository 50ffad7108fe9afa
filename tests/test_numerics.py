"""Numerics (issue #6, item 5): quantizer distances and Gumbel-softmax stay fp32 under bf16
autocast on CPU, labels do not depend on the precision mode, and extreme audio (digital
silence, clipped square wave, x1000 loud, DC offset) gives finite losses and gradients."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_robustness import tiny_criterion, tiny_model  # noqa: E402

SR = 16000


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def speech(seconds=1.0, seed=0):
    from audio_fixtures import synth_utterance

    return torch.from_numpy(synth_utterance(np.random.default_rng(seed), seconds, SR))


def seeded_forward(model, source, autocast: bool, seed=3):
    torch.manual_seed(seed)
    np.random.seed(seed)
    with bf16() if autocast else contextlib.nullcontext():
        return model(source=source)


def test_quantizer_similarity_fp32_and_labels_match_under_bf16():
    model = tiny_model(anchor_codebook_size=1024, enhanced_codebook_size=1024)
    q = model.anchor_quantizer
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, q.input_dim, generator=g)
    ref_sim = q.similarity(x)
    ref_labels = q(x)
    with bf16():
        # a bf16 matmul right before the quantizer must not leak into the distances
        y = torch.nn.functional.linear(x, torch.eye(q.input_dim))
        assert y.dtype == torch.bfloat16  # autocast is really active
        sim = q.similarity(x)
        labels = q(x)
        sim_from_bf16_input = q.similarity(x.bfloat16())
    assert sim.dtype == torch.float32 and sim_from_bf16_input.dtype == torch.float32
    assert torch.equal(sim, ref_sim)
    assert torch.equal(labels, ref_labels)
    enh = model.enhanced_quantizer
    with bf16():
        assert enh.similarity(torch.randn(5, enh.input_dim).bfloat16()).dtype == torch.float32


def test_model_under_bf16_autocast_fp32_targets_and_same_anchor_labels():
    model = tiny_model()
    model.train()
    source = torch.stack([speech(1.0, 0), speech(1.0, 1)])
    ref = seeded_forward(model, source, autocast=False)
    out = seeded_forward(model, source, autocast=True)
    # the filterbank and the anchor quantizer run in fp32: labels identical to the fp32 run
    assert torch.equal(out["anchor_labels"], ref["anchor_labels"])
    # Gumbel-softmax targets in fp32, exact one-hots in the forward pass
    t = out["enhanced_targets"]
    assert t.dtype == torch.float32
    assert torch.equal(t.sum(-1), torch.ones_like(t.sum(-1)))
    assert set(t.detach().unique().tolist()) <= {0.0, 1.0}
    # the heads do run in bf16 (so the test really exercised autocast)
    assert out["anchor_logits"].dtype == torch.bfloat16
    # and the loss is finite and backpropagates
    with bf16():
        torch.manual_seed(3)
        np.random.seed(3)
        loss, _, log = tiny_criterion()(model, {"id": torch.arange(2), "net_input": {"source": source}})
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def extreme_inputs():
    n = SR  # 1 s
    t = torch.arange(n) / SR
    base = speech(1.0, 5)
    return {
        "digital_silence": torch.zeros(n),
        "clipping_square": torch.sign(torch.sin(2 * np.pi * 200 * t)),
        "square_plus_one_exact": torch.where(torch.sin(2 * np.pi * 50 * t) >= 0, 1.0, -1.0),
        "loud_x1000": base * 1000.0,
        "dc_offset": base + 0.5,
        "dc_only": torch.full((n,), 0.25),
    }


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(extreme_inputs()))
def test_extreme_audio_finite_loss_and_grads(name, autocast):
    model = tiny_model()
    model.train()
    crit = tiny_criterion()
    x = extreme_inputs()[name]
    # pair with normal speech too: padding + batch statistics must survive a degenerate row
    source = torch.stack([x, speech(1.0, 9)])
    torch.manual_seed(0)
    np.random.seed(0)
    with bf16() if autocast else contextlib.nullcontext():
        loss, sample_size, log = crit(model, {"id": torch.arange(2), "net_input": {"source": source}})
    assert torch.isfinite(loss), (name, log)
    assert sample_size > 0
    for key in ("anchor_loss", "enhanced_loss", "penalty_gap"):
        assert np.isfinite(log[key]), (name, key, log)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads), name
    assert any(gr.abs().sum() > 0 for gr in grads)
    # the single extreme clip alone, too (no healthy row to lean on)
    model.zero_grad()
    with bf16() if autocast else contextlib.nullcontext():
        loss, _, _ = crit(model, {"id": torch.arange(1), "net_input": {"source": x[None]}})
    loss.backward()
    assert torch.isfinite(loss), name
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), name
