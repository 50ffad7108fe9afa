"""Behaviour of the birq model + criterion: streams, gradients, masking, BEST-RQ mode."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from birq_fairseq.criterions.birq_criterion import BirqCriterion, BirqCriterionConfig
from birq_fairseq.models.birq import BirqConfig, BirqModel
from conftest import tiny_model_overrides


class _Task:
    class cfg:
        sample_rate = 16000


def build(**kwargs):
    torch.manual_seed(0)
    return BirqModel(BirqConfig(**tiny_model_overrides(**kwargs)))


def batch(seed=0, batch_size=3, samples=24000, pad_last=8000):
    g = torch.Generator().manual_seed(seed)
    source = torch.randn(batch_size, samples, generator=g) * 0.1
    padding = torch.zeros(batch_size, samples, dtype=torch.bool)
    padding[-1, samples - pad_last:] = True
    source[padding] = 0
    return {"id": torch.arange(batch_size), "net_input": {"source": source, "padding_mask": padding}}


def seeded_forward(model, sample, seed=1):
    torch.manual_seed(seed)
    np.random.seed(seed)
    return model(**sample["net_input"])


def enhanced_loss(out, detach_targets=False):
    z = out["enhanced_targets"].detach() if detach_targets else out["enhanced_targets"]
    return -(z * F.log_softmax(out["enhanced_logits"], -1)).sum(-1).mean()


def grads(loss, params):
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def test_enhanced_targets_are_one_hot_with_straight_through_gradient():
    model = build(enhanced_label_grad=True)
    model.train()
    out = seeded_forward(model, batch())
    z = out["enhanced_targets"]
    assert z.requires_grad
    assert torch.all((z == 0) | (z == 1)) and torch.all(z.sum(-1) == 1)

    k = model.cfg.enhanced_layer
    label_generator = list(model.encoder.layers[0].parameters()) + list(model.subsampling.parameters())
    above_k = list(model.encoder.layers[k].parameters())
    with_label_grad = grads(enhanced_loss(out), label_generator + above_k)
    prediction_only = grads(enhanced_loss(out, detach_targets=True), label_generator + above_k)
    n = len(label_generator)
    # Layers <= k receive extra gradient through the labels ...
    diff = sum((a - b).abs().sum() for a, b in zip(with_label_grad[:n], prediction_only[:n]))
    assert diff > 1e-6
    # ... layers above k do not: they do not generate labels.
    for a, b in zip(with_label_grad[n:], prediction_only[n:]):
        assert torch.allclose(a, b, atol=1e-7)


def test_label_gradient_switch_off_stops_gradient_through_labels():
    model = build(enhanced_label_grad=False)
    model.train()
    out = seeded_forward(model, batch())
    assert not out["enhanced_targets"].requires_grad
    params = list(model.encoder.layers[0].parameters())
    for a, b in zip(grads(enhanced_loss(out), params), grads(enhanced_loss(out, True), params)):
        assert torch.equal(a, b)


def test_label_pass_uses_unmasked_input_and_main_pass_masked_noise():
    model = build(mask_prob=0.5, mask_noise_std=0.1)
    model.train()
    seen = []
    model.subsampling.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    sample = batch()
    clean, lengths = model.frontend(**{"waveform": sample["net_input"]["source"],
                                       "padding_mask": sample["net_input"]["padding_mask"]})
    torch.manual_seed(3)
    np.random.seed(3)
    model(**sample["net_input"])
    assert len(seen) == 2  # the label generator's unmasked pass, then the main (masked) pass
    label_input, masked_input = seen
    assert torch.equal(label_input, clean)
    frame_changed = (masked_input != clean).any(-1)  # (B, T)
    assert frame_changed.any()
    # Masking acts on whole 40 ms encoder frames (4 filterbank frames) ...
    steps = frame_changed.view(frame_changed.size(0), -1, 4)
    assert torch.all(steps.all(-1) == steps.any(-1))
    # ... replaces them with N(0, 0.1^2) noise (normalised features have unit variance) ...
    noise = masked_input[frame_changed]
    assert abs(float(noise.std()) - 0.1) < 0.02 and abs(float(noise.mean())) < 0.02
    # ... and never touches padding.
    valid = torch.arange(clean.size(1))[None, :] < lengths[:, None]
    assert not frame_changed[~valid].any()


def test_losses_count_masked_frames_only():
    model = build(mask_prob=0.5)
    model.train()
    sample = batch()
    captured = {}
    original = model.time_mask

    def spy(step_padding):  # noqa: E306
        captured["mask"] = original(step_padding)
        captured["padding"] = step_padding
        return captured["mask"]

    model.time_mask = spy
    criterion = BirqCriterion(BirqCriterionConfig(), _Task())
    loss, sample_size, log = criterion(model, sample)
    mask, padding = captured["mask"], captured["padding"]
    assert padding[-1].any() and not (mask & padding).any()
    assert sample_size == int(mask.sum()) == log["anchor_count"] == log["enhanced_count"]
    assert 0 < sample_size < mask.numel()


def test_bestrq_mode_is_exactly_the_anchor_loss():
    bestrq = build(enhanced_stream=False)
    bestrq.train()
    assert not any(name.startswith("enhanced") for name in bestrq.state_dict())
    calls = []
    bestrq.encoder.layers[0].register_forward_hook(lambda *a: calls.append(1))
    criterion = BirqCriterion(BirqCriterionConfig(gamma=3.0), _Task())
    torch.manual_seed(5)
    np.random.seed(5)
    loss, sample_size, log = criterion(bestrq, batch())
    assert len(calls) == 1  # no extra pass
    torch.manual_seed(5)
    np.random.seed(5)
    out = bestrq(**batch()["net_input"])
    reference = F.cross_entropy(out["anchor_logits"].flatten(0, 1), out["anchor_labels"].flatten(), reduction="sum")
    assert torch.allclose(loss, reference, rtol=1e-6)
    assert "enhanced_loss" not in log and "gamma" not in log

    birq = build(enhanced_stream=True)
    birq.train()
    birq_loss, _, birq_log = criterion(birq, batch())
    assert not torch.allclose(birq_loss, torch.tensor(birq_log["anchor_loss"]))


@pytest.mark.parametrize("hard", [True, False], ids=["one_hot_targets", "soft_targets"])
def test_enhanced_cross_entropy_matches_an_independent_computation(hard):
    """The enhanced loss, accuracy and code perplexity the criterion logs, and its total loss,
    recomputed from the model's outputs with torch's own cross-entropy and a numpy histogram."""
    model = build(enhanced_hard_targets=hard, enhanced_num_codebooks=2)
    model.train()
    criterion = BirqCriterion(BirqCriterionConfig(), _Task())  # the paper's w1 = 0.1, gamma = 24
    criterion(model, batch(seed=1))
    model.penalty_baseline.commit()  # a v^ from a previous update
    baseline = float(model.penalty_baseline.minimum)
    torch.manual_seed(6)
    np.random.seed(6)
    loss, frames, log = criterion(model, batch())
    out = seeded_forward(model, batch(), seed=6)
    logits, targets = out["enhanced_logits"].detach(), out["enhanced_targets"].detach()
    m, books, vocab = logits.shape
    assert m == frames and books == 2 and targets.shape == logits.shape
    labels = targets.argmax(-1)
    if hard:  # one-hots: class-index cross-entropy
        reference = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), reduction="sum") / books
    else:  # a distribution per frame: torch's class-probability cross-entropy
        assert ((targets > 0) & (targets < 1)).any()
        reference = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1, vocab), reduction="sum") / books
    assert log["enhanced_loss"] == pytest.approx(float(reference), rel=1e-5)
    assert log["enhanced_correct"] == int((logits.argmax(-1) == labels).sum()) and log["enhanced_count"] == m * books
    ppl = []
    for book in labels.T.numpy():
        p = np.bincount(book, minlength=vocab) / len(book)
        ppl.append(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    assert log["enhanced_code_ppl"] == pytest.approx(float(np.mean(ppl)), rel=1e-5)
    # The total, with an independent anchor loss: w1 * L_e + w2 * (L_a - v^ * frames).
    anchor = F.cross_entropy(out["anchor_logits"].flatten(0, 1), out["anchor_labels"].flatten(), reduction="sum")
    anchor = anchor / out["anchor_labels"].size(-1)
    expected = 0.1 * float(reference) + 2.4 * (float(anchor) - baseline * frames)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_penalty_combination_and_gamma_schedule():
    model = build()
    model.train()
    criterion = BirqCriterion(BirqCriterionConfig(upper_weight=1.0, gamma=0.5, gamma_final=2.5,
                                                  gamma_ramp_updates=100), _Task())
    model.set_num_updates(50)
    # Before the first update there is no v^ yet: the penalty gap is 0.
    loss, frames, log = criterion(model, batch())
    assert log["gamma"] == pytest.approx(1.5)
    assert float(loss) == pytest.approx(log["enhanced_loss"], rel=1e-5)
    # v^ advances once per update (the task's optimizer_step commits), not per forward.
    model.penalty_baseline.commit()
    baseline = float(model.penalty_baseline.minimum)
    assert baseline == pytest.approx(log["anchor_loss"] / frames)
    loss, frames, log = criterion(model, batch(seed=2))
    assert float(model.penalty_baseline.minimum) == baseline
    expected = log["enhanced_loss"] + 1.5 * (log["anchor_loss"] - baseline * frames)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert criterion.gamma_at(0) == 0.5 and criterion.gamma_at(1000) == 2.5
    # The upper stream can be swapped: then the anchor loss is the upper level.
    swapped = BirqCriterion(BirqCriterionConfig(upper_stream="anchor", upper_weight=1.0, gamma=2.0), _Task())
    other = build()
    other.train()
    loss, frames, log = swapped(other, batch(seed=1))
    other.penalty_baseline.commit()
    baseline = float(other.penalty_baseline.minimum)
    loss, frames, log = swapped(other, batch(seed=3))
    assert float(loss) == pytest.approx(log["anchor_loss"] + 2.0 * (log["enhanced_loss"] - baseline * frames),
                                        rel=1e-5)


def test_paper_weights_scale_both_streams():
    """w1 * (L_e + gamma * (L_a - v^)) with the paper's w1 = 0.1, gamma = 24: w2 = 2.4."""
    model = build()
    model.train()
    criterion = BirqCriterion(BirqCriterionConfig(), _Task())
    loss, frames, log = criterion(model, batch())
    model.penalty_baseline.commit()
    baseline = float(model.penalty_baseline.minimum)
    loss, frames, log = criterion(model, batch(seed=2))
    expected = 0.1 * log["enhanced_loss"] + 2.4 * (log["anchor_loss"] - baseline * frames)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert log["gamma"] == 24.0


def test_gumbel_temperature_anneals_like_wav2vec2_latent_temp():
    model = build(gumbel_temp=(2.0, 0.5, 0.9))
    model.set_num_updates(0)
    assert model.gumbel_temperature == 2.0
    model.set_num_updates(3)
    assert model.gumbel_temperature == pytest.approx(2.0 * 0.9 ** 3)
    model.set_num_updates(1000)
    assert model.gumbel_temperature == 0.5


def test_time_mask_statistics_match_config():
    model = build(mask_prob=0.4, mask_length=5)
    torch.manual_seed(0)
    padding = torch.zeros(256, 200, dtype=torch.bool)
    padding[::2, 150:] = True
    mask = model.time_mask(padding)
    assert not (mask & padding).any()
    # fairseq semantics: mask_prob * T / mask_length span starts, spans may overlap, so
    # the masked fraction is about 1 - exp(-mask_prob).
    lengths = (~padding).sum(-1).float()
    fraction = float((mask.sum(-1) / lengths).mean())
    assert abs(fraction - (1 - np.exp(-0.4))) < 0.03
    # Spans stay whole: every masked run is at least mask_length frames long.
    runs = []
    for row in mask.numpy().astype(np.int8):
        edges = np.flatnonzero(np.diff(np.r_[0, row, 0]))
        runs.extend(edges[1::2] - edges[::2])
    assert min(runs) >= 5
    # Reproducible from torch's seed (fairseq reseeds torch every update).
    torch.manual_seed(0)
    assert torch.equal(model.time_mask(padding), mask)
    torch.manual_seed(1)
    assert not torch.equal(model.time_mask(padding), mask)


def test_extract_features_contract_for_wav2vec_ctc():
    model = build(mask_channel_prob=0.5, mask_channel_length=8)
    sample = batch()
    model.eval()
    res = model.extract_features(**sample["net_input"], mask=False)
    x, padding = res["x"], res["padding_mask"]
    assert x.shape[0] == 3 and x.shape[2] == model.cfg.encoder_embed_dim
    # 40 ms frames: 24000 samples (1.5 s) -> 37 encoder frames; the padded clip has fewer.
    assert x.shape[1] == 37 and padding.shape == x.shape[:2]
    assert padding[-1].sum() > 0 and padding[0].sum() == 0
    assert len(res["layer_results"]) == model.cfg.encoder_layers
    # Channel masking applies to the encoder-input width (encoder_embed_dim), as in wav2vec 2.0.
    model.train()
    seen = []
    model.encoder.register_forward_pre_hook(lambda m, args: None)
    original = model.run_encoder
    model.run_encoder = lambda x, p, last=None: (seen.append(x.detach()), original(x, p, last))[1]
    model.extract_features(**sample["net_input"], mask=True)
    zero_channels = (seen[0] == 0).all(1)  # (B, D)
    assert zero_channels.any() and zero_channels.shape[-1] == model.cfg.encoder_embed_dim

    model.remove_pretraining_modules()
    assert model.anchor_quantizer is None and model.enhanced_head is None
    full = build(mask_channel_prob=0.5, mask_channel_length=8).state_dict()
    model.load_state_dict(full, strict=True)  # None-ed modules keep strict loading working


@pytest.mark.parametrize("field,value,message", [
    ("enhanced_layer", 5, "enhanced_layer=5 is outside the encoder"),
    ("enhanced_layer", 0, "enhanced_layer=0 is outside the encoder"),
    ("anchor_codebook_size", 0, "anchor_codebook_size=0 must be > 0"),
    ("enhanced_codebook_dim", -2, "enhanced_codebook_dim=-2 must be > 0"),
    ("mask_prob", 1.5, r"mask_prob=1.5 must be in \[0, 1\]"),
    ("similarity_temp", 0.0, "similarity_temp=0.0 must be > 0"),
])
def test_bad_config_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        build(**{field: value})


def test_code_perplexity_detects_collapse():
    from birq_fairseq.criterions.birq_criterion import code_perplexity

    uniform = torch.arange(64).repeat(4)[:, None]  # every code equally often
    collapsed = torch.zeros(256, 1, dtype=torch.long)
    two_books = torch.stack([torch.arange(256) % 16, torch.zeros(256, dtype=torch.long)], -1)
    assert code_perplexity(uniform, 64) == pytest.approx(64.0)
    assert code_perplexity(collapsed, 64) == pytest.approx(1.0)
    assert code_perplexity(two_books, 64) == pytest.approx((16.0 + 1.0) / 2)


def test_fairseq_bf16_training_keeps_frontend_and_quantizers_in_fp32():
    """fairseq's common.bf16/fp16 call model.bfloat16()/half(): features and labels must not change."""
    reference = build()
    reference.eval()
    half = build()
    half.load_state_dict(reference.state_dict())
    half.bfloat16()
    assert half.encoder.layers[0].fc1.weight.dtype == torch.bfloat16
    for module in (half.frontend, half.anchor_quantizer, half.enhanced_quantizer, half.penalty_baseline):
        assert all(b.dtype in (torch.float32, torch.float64, torch.long) for b in module.buffers())
    assert half.penalty_baseline.minimum.dtype == torch.float64
    sample = batch()
    with torch.no_grad():
        torch.manual_seed(0)
        ref_out = reference(**sample["net_input"])
        torch.manual_seed(0)
        source = sample["net_input"]["source"].bfloat16()  # fairseq casts the batch too
        out = half(source, sample["net_input"]["padding_mask"])
    assert out["anchor_logits"].dtype == torch.bfloat16
    # Labels come from fp32 features and codebooks: the same masked frames get the same labels
    # (the bf16 input waveform differs from fp32 only by rounding, far below the features' scale).
    agree = (out["anchor_labels"] == ref_out["anchor_labels"]).float().mean()
    assert agree > 0.9
    assert torch.isfinite(out["anchor_logits"].float()).all()
    assert torch.isfinite(out["enhanced_targets"]).all() and out["enhanced_targets"].dtype == torch.float32


def test_diversity_penalty_pushes_enhanced_codes_apart():
    """Optional anti-collapse term: off by default; when on, it raises the loss by exactly its
    weighted value and its gradient reaches the label generator."""
    model = build()
    model.train()
    plain = BirqCriterion(BirqCriterionConfig(), _Task())
    diverse = BirqCriterion(BirqCriterionConfig(diversity_weight=2.0), _Task())
    torch.manual_seed(4)
    np.random.seed(4)
    loss, frames, log = plain(model, batch())
    assert "enhanced_diversity" not in log
    torch.manual_seed(4)
    np.random.seed(4)
    out = model(**batch()["net_input"])
    logits = out["enhanced_code_logits"]
    assert logits.shape == out["enhanced_targets"].shape and logits.dtype == torch.float32
    torch.manual_seed(4)
    np.random.seed(4)
    loss_d, frames_d, log_d = diverse(model, batch())
    assert frames_d == frames and 0 < log_d["enhanced_diversity"] / frames < 1
    assert float(loss_d - loss) == pytest.approx(2.0 * log_d["enhanced_diversity"], rel=1e-4)
    layer0 = list(model.encoder.layers[0].parameters())
    g_plain = torch.autograd.grad(loss, layer0, allow_unused=True)
    g_div = torch.autograd.grad(loss_d, layer0, allow_unused=True)
    assert sum((a - b).abs().sum() for a, b in zip(g_plain, g_div)) > 0


@pytest.mark.parametrize("pos_enc_type", ["abs", "rel_pos"])
def test_conformer_encoder_trains_both_streams(pos_enc_type):
    model = build(layer_type="conformer", pos_enc_type=pos_enc_type, depthwise_conv_kernel_size=7,
                  attn_type="espnet" if pos_enc_type == "rel_pos" else "")
    model.train()
    criterion = BirqCriterion(BirqCriterionConfig(), _Task())
    loss, frames, log = criterion(model, batch())
    loss.backward()
    assert torch.isfinite(loss) and frames > 0
    first_layer_grad = sum(p.grad.abs().sum() for p in model.encoder.layers[0].parameters() if p.grad is not None)
    assert first_layer_grad > 0
    res = model.extract_features(**batch()["net_input"], mask=False)
    assert res["x"].shape[-1] == model.cfg.encoder_embed_dim


def test_soft_gumbel_targets_option():
    hard, soft = build(), build(enhanced_hard_targets=False)
    for model in (hard, soft):
        model.train()
    out_hard, out_soft = seeded_forward(hard, batch()), seeded_forward(soft, batch())
    assert torch.all((out_hard["enhanced_targets"] == 0) | (out_hard["enhanced_targets"] == 1))
    targets = out_soft["enhanced_targets"]
    assert torch.allclose(targets.sum(-1), torch.ones_like(targets.sum(-1)), atol=1e-5)
    assert ((targets > 0) & (targets < 1)).any()  # a distribution, not a one-hot
    enhanced_loss(out_soft).backward()
    assert soft.encoder.layers[0].fc1.weight.grad.abs().sum() > 0


def test_frontend_power_spectrogram_matches_torchaudio():
    """The front-end's |STFT|^2 (re^2 + im^2, for speed) is torchaudio's Spectrogram(power=2)
    to fp32 rounding, and so is the normalised filterbank built on it."""
    import torchaudio

    from birq_fairseq.modules.frontend import LogMelFrontend

    torch.manual_seed(0)
    frontend = LogMelFrontend()
    wave = torch.randn(3, 16000) * torch.tensor([[1.0], [1e-3], [30.0]])  # loud, near-silent, clipped-loud
    ours = frontend.power_spectrogram(wave)
    reference = frontend.melspec.spectrogram(wave)  # torchaudio: abs().pow(2)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=0.0)
    feats, _ = frontend(wave)
    ref_mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, win_length=400, hop_length=160,
                                                   n_mels=80, center=False, power=2.0)(wave)
    ref_log = torch.log(ref_mel + 1e-6).transpose(1, 2)[:, : feats.size(1)]
    ref_feats = (ref_log - ref_log.mean(1, keepdim=True)) / (ref_log.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(feats, ref_feats, rtol=1e-4, atol=1e-4)
