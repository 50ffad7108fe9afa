"""The label generator's cost levers (issue #10, item 1), both off by default.

- ``model.enhanced_checkpoint_activations``: layers 1..k recomputed in backward. Claimed exact:
  the same loss and the same gradients (bit for bit here), with fewer bytes kept for backward.
- ``model.mask_after_subsampling``: one conv-subsampling pass shared by the label generator and
  the main pass; masked *encoder* frames get noise. A different model (so off): checked that it
  masks exactly the masked frames, runs the subsampling once, and trains.
"""

import pytest
import torch

from conftest import tiny_model_overrides

from birq_fairseq.criterions.birq_criterion import BirqCriterion, BirqCriterionConfig
from birq_fairseq.models.birq import BirqConfig, BirqModel


class _Task:
    class cfg:
        sample_rate = 16000


def build(**extra):
    torch.manual_seed(0)
    model = BirqModel(BirqConfig(**tiny_model_overrides(**extra)))
    model.train()
    return model, BirqCriterion(BirqCriterionConfig(), _Task())


def sample(batch=2, seconds=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    wave = torch.randn(batch, int(16000 * seconds), generator=g) * 0.1
    return {"id": torch.arange(batch), "net_input": {"source": wave, "padding_mask": None}}


def loss_and_grads(model, criterion, batch, seed=1):
    torch.manual_seed(seed)  # same mask, noise and Gumbel draws for every model
    model.zero_grad(set_to_none=True)
    loss, _, _ = criterion(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("extra", [{}, {"enhanced_dropout": True, "dropout": 0.2, "attention_dropout": 0.1}],
                         ids=["eval-mode generator", "generator with dropout"])
def test_checkpointed_generator_same_loss_and_gradients(extra):
    batch = sample()
    plain = loss_and_grads(*build(**extra), batch)
    ckpt = loss_and_grads(*build(enhanced_checkpoint_activations=True, **extra), batch)
    assert torch.equal(plain[0], ckpt[0])
    assert plain[1].keys() == ckpt[1].keys() and len(plain[1]) > 10
    for name, grad in plain[1].items():
        assert torch.equal(grad, ckpt[1][name]), name


def saved_bytes(model, criterion, batch):
    """Bytes autograd keeps for backward during one forward (tensors counted once)."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = criterion(model, batch)
    return sum(seen.values())


def test_checkpointed_generator_keeps_fewer_activations():
    batch = sample(seconds=2.0)
    plain = saved_bytes(*build(enhanced_layer=3), batch)
    ckpt = saved_bytes(*build(enhanced_layer=3, enhanced_checkpoint_activations=True), batch)
    assert ckpt < 0.85 * plain, (ckpt, plain)


def test_checkpoint_with_generator_layerdrop_is_rejected():
    with pytest.raises(ValueError, match="enhanced_checkpoint_activations.*encoder_layerdrop=0"):
        BirqModel(BirqConfig(**tiny_model_overrides(enhanced_checkpoint_activations=True, enhanced_dropout=True,
                                                    encoder_layerdrop=0.1)))


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_mask_after_subsampling_masks_the_masked_encoder_frames():
    model, _ = build(mask_after_subsampling=True, mask_prob=0.5, mask_noise_std=0.1)
    model.eval()  # no input dropout: unmasked frames must equal embed(feats) exactly
    batch = sample(seconds=2.0)["net_input"]
    seen = {}
    run_encoder = model.run_encoder

    def spy(x, step_padding, last_layer=None):
        seen["x"] = x
        return run_encoder(x, step_padding, last_layer)

    model.run_encoder = spy
    torch.manual_seed(3)
    out = model(**batch, mask=True, features_only=True)
    feats, _ = model.frontend(batch["source"], None)
    clean = model.embed(feats)
    masked = out["mask_indices"]
    assert masked.any() and (~masked).any()
    x = seen["x"]
    assert torch.equal(x[~masked], clean[~masked])  # unmasked encoder frames untouched
    assert not torch.isclose(x[masked], clean[masked]).any()  # every masked frame replaced
    assert x[masked].std().item() == pytest.approx(0.1, rel=0.2)  # by N(0, mask_noise_std^2)


@pytest.mark.parametrize("shared,expected", [(False, 2), (True, 1)])
def test_one_subsampling_pass_when_shared(shared, expected):
    model, criterion = build(mask_after_subsampling=shared)
    calls = count_calls(model.subsampling)
    criterion(model, sample())
    assert len(calls) == expected


def test_mask_after_subsampling_trains():
    model, criterion = build(mask_after_subsampling=True, enhanced_checkpoint_activations=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = sample(batch=2, seconds=1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for step in range(8):
        torch.manual_seed(step)
        opt.zero_grad()
        loss, _, log = criterion(model, batch)
        loss.backward()
        opt.step()
        model.set_num_updates(step + 1)
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert model.subsampling.conv[0].weight.grad.abs().sum() > 0  # gradient reaches the shared subsampling
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n.startswith("encoder."))
    assert min(losses[-3:]) < losses[0]
