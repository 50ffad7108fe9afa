"""Label-generator choices the paper leaves open (selection, normalisation of z^(k), warm-up of
the upper level) and the collapse guard."""

import logging

import pytest
import torch
import torch.nn.functional as F

from birq_fairseq.criterions.birq_criterion import BirqCriterion, BirqCriterionConfig, CollapseGuard
from birq_fairseq.probe import frame_codes


# the model and batch helpers of the model's own tests
from test_model import _Task, build
from test_model import batch as sample
from test_model import seeded_forward as seeded


def test_argmax_selection_is_the_argmax_with_the_gumbel_softmax_gradient():
    model = build(enhanced_selection="argmax")
    model.train()
    logits = torch.randn(50, 1, 16, requires_grad=True)
    torch.manual_seed(3)
    targets = model.select_enhanced_labels(logits)
    # forward: exactly the one-hot of the most likely code, whatever the Gumbel noise
    assert torch.equal(targets.detach(), F.one_hot(logits.argmax(-1), 16).float())
    # backward: the soft Gumbel-softmax sample's gradient (same noise draw)
    weights = torch.randn(50, 1, 16)
    (targets * weights).sum().backward()
    torch.manual_seed(3)
    ref_logits = logits.detach().clone().requires_grad_()
    soft = F.gumbel_softmax(ref_logits, tau=model.gumbel_temperature, hard=False)
    (soft * weights).sum().backward()
    assert logits.grad.abs().sum() > 0
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)
    # the paper's selection draws a sample: on flat logits it often differs from the argmax
    gumbel = build(enhanced_selection="gumbel")
    flat = torch.zeros(200, 1, 16) + 0.01 * torch.randn(200, 1, 16)
    drawn = gumbel.select_enhanced_labels(flat).argmax(-1)
    assert (drawn != flat.argmax(-1)).float().mean() > 0.5


def test_argmax_selection_trains_layers_up_to_k_through_the_labels():
    model = build(enhanced_selection="argmax", enhanced_sinkhorn_iters=3)
    model.train()
    out = seeded(model, sample())
    z = out["enhanced_targets"]
    assert torch.all((z == 0) | (z == 1)) and torch.all(z.sum(-1) == 1)
    # the labels are the argmax of the (balanced) logits they came with
    assert torch.equal(z.detach().argmax(-1), out["enhanced_code_logits"].detach().argmax(-1))
    first_layer = list(model.encoder.layers[0].parameters())
    loss = -(z * F.log_softmax(out["enhanced_logits"], -1)).sum()
    with_labels = torch.autograd.grad(loss, first_layer, retain_graph=True)
    detached = -(z.detach() * F.log_softmax(out["enhanced_logits"], -1)).sum()
    without = torch.autograd.grad(detached, first_layer, retain_graph=True)
    assert sum((a - b).abs().sum() for a, b in zip(with_labels, without)) > 1e-6


def test_soft_targets_are_the_relaxed_sample_whatever_the_selection():
    model = build(enhanced_selection="argmax", enhanced_hard_targets=False)
    logits = torch.randn(40, 1, 16)
    torch.manual_seed(5)
    soft = model.select_enhanced_labels(logits)
    torch.manual_seed(5)
    assert torch.equal(soft, F.gumbel_softmax(logits, tau=model.gumbel_temperature, hard=False))
    assert not torch.all((soft == 0) | (soft == 1))


def test_instance_norm_normalises_each_utterance_over_its_unpadded_frames():
    model = build(enhanced_feature_norm="instance")
    h = torch.randn(2, 10, 8) * 3 + 5
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[1, 6:] = True
    h[1, 6:] = 1e3  # padding must not leak into the statistics
    z = model.enhanced_features(h, padding)
    for b, n in ((0, 10), (1, 6)):
        valid = z[b, :n]
        assert torch.allclose(valid.mean(0), torch.zeros(8), atol=1e-5)
        assert torch.allclose(valid.var(0, unbiased=False), torch.ones(8), atol=1e-3)
    # a direction shared by every frame of an utterance is removed (layer norm keeps it)
    shared = torch.randn(1, 1, 8) * 10
    h2 = torch.randn(1, 12, 8) + shared
    no_pad = torch.zeros(1, 12, dtype=torch.bool)
    inst = model.enhanced_features(h2, no_pad)
    layer = build().enhanced_features(h2, no_pad)
    cos = lambda z: F.cosine_similarity(z[0], z[0].mean(0, keepdim=True)).mean()  # noqa: E731
    assert cos(inst) < 0.2 < cos(layer)


@pytest.mark.parametrize("options", [dict(enhanced_feature_norm="instance"),
                                     dict(enhanced_selection="argmax", enhanced_sinkhorn_iters=3)])
def test_probe_codes_follow_the_label_generator_options(options):
    """The probe's codes are the training labels' codes: same normalisation, balancing and argmax."""
    model = build(mask_prob=0.0001, **options)
    model.eval()
    s = sample(batch_size=2, pad_last=0)
    codes, lengths = frame_codes(model, s["net_input"]["source"], s["net_input"]["padding_mask"])
    with torch.no_grad():
        feats, frame_lengths = model.frontend(s["net_input"]["source"], s["net_input"]["padding_mask"])
        steps = feats.size(1) // 4
        padding = torch.zeros(2, steps, dtype=torch.bool)
        h, _ = model.run_encoder(model.encoder_input(feats), padding, model.enhanced_layer - 1)
        logits = model.enhanced_code_logits(model.enhanced_features(h, padding))
        if model.cfg.enhanced_sinkhorn_iters:
            from birq_fairseq.modules.code_balance import sinkhorn_offset
            flat = logits[~padding]
            expected = (flat + sinkhorn_offset(flat, 3)).argmax(-1)[:, 0]
        else:
            expected = logits[~padding].argmax(-1)[:, 0]
    assert torch.equal(codes["enhanced"][~padding], expected)


def _criterion(**kwargs):
    return BirqCriterion(BirqCriterionConfig(**kwargs), _Task())


def test_upper_level_warm_up_switches_the_enhanced_loss_on_at_its_update():
    model = build()
    model.train()
    crit = _criterion(enhanced_start_updates=10, collapse_warn_ratio=0.0)
    s = sample()

    def enhanced_grad(updates):
        model.set_num_updates(updates)
        model.zero_grad()
        loss, _, log = crit(model, s)
        loss.backward()
        return model.enhanced_head.weight.grad

    before = enhanced_grad(9)
    assert before is None or before.abs().sum() == 0  # only the anchor loss trains before update 10
    after = enhanced_grad(10)
    assert after is not None and after.abs().sum() > 0


def test_collapse_guard_warns_once_after_consecutive_low_windows(caplog):
    guard = CollapseGuard(ratio=0.2, window_updates=10, windows=3)
    messages = []
    caplog.set_level(logging.WARNING)
    for update in range(0, 200):
        enhanced = 20.0 if update < 50 else 2.0  # collapse at update 50
        messages.append(guard.observe(update, enhanced, 20.0))
    fired = [(u, m) for u, m in enumerate(messages) if m]
    assert len(fired) == 1, fired  # one line, not one per step or per window
    update, message = fired[0]
    assert update == 80  # windows 50-59, 60-69, 70-79 low: reported when the third one closes
    assert "collapsed" in message and "update 80" in message and "enhanced_sinkhorn_iters" in message
    assert sum("collapsed" in r.getMessage() for r in caplog.records) == 1


def test_collapse_guard_rearms_after_recovery_and_stays_quiet_when_healthy():
    guard = CollapseGuard(ratio=0.2, window_updates=10, windows=2)
    ppl = [2.0] * 40 + [20.0] * 30 + [2.0] * 40
    fired = [u for u, e in enumerate(ppl) if guard.observe(u, e, 20.0)]
    assert fired == [20, 90]
    healthy = CollapseGuard(ratio=0.2, window_updates=10, windows=2)
    assert not any(healthy.observe(u, 5.0, 20.0) for u in range(500))  # ratio 0.25 >= 0.2
    off = CollapseGuard(ratio=0.0, window_updates=10, windows=1)
    assert not any(off.observe(u, 1.0, 20.0) for u in range(100))


def test_criterion_feeds_the_guard_in_training_only():
    model = build()
    crit = _criterion(collapse_window_updates=1, collapse_warn_windows=1, collapse_warn_ratio=100.0)
    s = sample()
    model.eval()
    for update in range(3):
        model.set_num_updates(update)
        crit(model, s)
    assert crit.collapse_guard.window is None
    model.train()
    for update in range(3):
        model.set_num_updates(update)
        crit(model, s)
    assert crit.collapse_guard.warned  # ratio 100: any perplexity is "low"


def test_checkpoints_from_before_the_selection_field_keep_the_gumbel_sample(tmp_path):
    """The default changed to argmax: a checkpoint whose config has no enhanced_selection was
    trained (and must be probed) with the literal Gumbel sample."""
    from omegaconf import OmegaConf

    from birq_fairseq.loading import build_birq

    model = build(enhanced_sinkhorn_iters=0)
    cfg = OmegaConf.create({k: v for k, v in vars(model.cfg).items() if not k.startswith("_")} | {"_name": "birq"})
    old = OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg).items() if k != "enhanced_selection"})
    assert build_birq(old, model.state_dict()).cfg.enhanced_selection == "gumbel"
    assert build_birq(cfg, model.state_dict()).cfg.enhanced_selection == "argmax"
