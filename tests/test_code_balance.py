"""Anti-collapse options of the enhanced stream (off by default, not in the paper)."""

import pytest
import torch

from birq_fairseq.models.birq import BirqConfig, BirqModel
from birq_fairseq.modules.code_balance import LogitCentering, sinkhorn_offset
from conftest import tiny_model_overrides


def skewed_logits(frames=512, codes=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(frames, 1, codes, generator=g)
    logits[..., 0] += 4.0  # one code wins for almost every frame: a collapsed stream
    return logits


def test_sinkhorn_offset_balances_the_batch_and_is_a_constant_for_the_gradient():
    logits = skewed_logits().requires_grad_()
    assert (logits.argmax(-1) == 0).float().mean() > 0.9
    offset = sinkhorn_offset(logits, iterations=10)
    assert not offset.requires_grad
    q = (logits + offset).softmax(-1)
    per_code = q.sum(0).squeeze(0)  # mass per code over the batch: M / V each
    assert torch.allclose(per_code, torch.full_like(per_code, 512 / 16), rtol=0.05)
    usage = torch.bincount((logits + offset).argmax(-1).flatten(), minlength=16)
    assert usage.max() < 0.25 * 512  # no code keeps most frames
    # the offset is a constant: the gradient reaching the logits is the one at logits + offset
    (logits + offset).softmax(-1)[:, 0, 3].sum().backward()
    shifted = (logits + offset).detach().requires_grad_()
    shifted.softmax(-1)[:, 0, 3].sum().backward()
    assert logits.grad.abs().sum() > 0 and torch.allclose(logits.grad, shifted.grad)


def test_centering_pushes_down_the_code_that_wins_everywhere():
    centering = LogitCentering(1, 16, momentum=0.9)
    centering.train()
    logits = skewed_logits()
    first = centering(logits)  # first batch initialises the centre after use
    assert torch.equal(first, logits)
    centered = centering(logits)
    assert (centered.argmax(-1) == 0).float().mean() < 0.5
    assert torch.allclose(centering.center, logits.mean(0), atol=1e-5)
    centering.eval()
    before = centering.center.clone()
    centering(skewed_logits(seed=1))
    assert torch.equal(centering.center, before)  # no update at evaluation
    with pytest.raises(ValueError, match="enhanced_centering"):
        LogitCentering(1, 16, momentum=1.5)


@pytest.mark.parametrize("option", [{"enhanced_centering": 0.9}, {"enhanced_sinkhorn_iters": 3}])
def test_options_train_checkpoint_and_finetune(option):
    torch.manual_seed(0)
    model = BirqModel(BirqConfig(**tiny_model_overrides(**option)))
    model.train()
    source = torch.randn(2, 16000) * 0.1
    out = model(source, torch.zeros(2, 16000, dtype=torch.bool))
    loss = -(out["enhanced_targets"] * out["enhanced_logits"].log_softmax(-1)).sum()
    loss.backward()
    first_layer = model.encoder.layers[0].fc1.weight.grad
    assert first_layer is not None and first_layer.abs().sum() > 0  # labels stay differentiable
    state = model.state_dict()
    assert ("enhanced_centering.center" in state) == ("enhanced_centering" in option)
    model.remove_pretraining_modules()
    model.load_state_dict(state, strict=True)  # wav2vec_ctc loads pretraining weights strictly
