"""The paper's settings are the defaults (../shared/BIRQ_METHOD.md, docs/method.md#settings):
w1 = 0.1, w2 = 2.4 (gamma = w2 / w1 = 24), Gumbel tau = 0.5 held fixed, k = round(0.7 L)."""

import os
import sys

import pytest

from birq_fairseq.criterions.birq_criterion import BirqCriterion, BirqCriterionConfig
from birq_fairseq.models.birq import BirqConfig, BirqModel, resolve_enhanced_layer
from conftest import REPO, tiny_model_overrides

PRETRAIN_DIR = os.path.join(REPO, "examples", "pretrain")
sys.path.insert(0, PRETRAIN_DIR)
from pretrain_recipes import load_recipe, load_section  # noqa: E402  (shared with the benchmarks)

BIRQ_CONFIGS = ["tiny_birq", "base_birq_librispeech", "conformer_birq_librispeech"]


def test_dataclass_defaults_are_the_papers():
    model_cfg, crit_cfg = BirqConfig(fp16=False), BirqCriterionConfig()
    assert crit_cfg.upper_weight == 0.1 and crit_cfg.gamma == 24.0
    assert crit_cfg.upper_weight * crit_cfg.gamma == pytest.approx(2.4)
    assert crit_cfg.gamma_final is None and crit_cfg.upper_stream == "enhanced"
    assert crit_cfg.diversity_weight == 0.0
    assert tuple(model_cfg.gumbel_temp) == (0.5, 0.5, 1.0)
    assert model_cfg.enhanced_layer is None and model_cfg.enhanced_label_grad
    assert resolve_enhanced_layer(model_cfg) == 8  # 12 layers
    # the label generator chosen by the label-health grid (RESULTS.md), not the literal Gumbel sample
    assert (model_cfg.enhanced_selection, model_cfg.enhanced_sinkhorn_iters) == ("argmax", 3)
    assert (model_cfg.enhanced_feature_norm, model_cfg.similarity_temp) == ("layer", 0.1)


@pytest.mark.parametrize("layers, k", [(1, 1), (2, 1), (4, 3), (5, 4), (6, 4), (10, 7), (12, 8), (24, 17)])
def test_k_is_seventy_percent_of_depth_unless_set(layers, k):
    assert resolve_enhanced_layer(BirqConfig(encoder_layers=layers, fp16=False)) == k
    assert resolve_enhanced_layer(BirqConfig(encoder_layers=layers, enhanced_layer=1, fp16=False)) == 1


@pytest.mark.parametrize("config_name", BIRQ_CONFIGS)
def test_every_birq_config_uses_the_papers_settings(config_name):
    model_cfg = load_section(config_name, "model", BirqConfig)
    crit_cfg = load_section(config_name, "criterion", BirqCriterionConfig)
    assert model_cfg.enhanced_stream
    assert model_cfg.enhanced_layer is None
    assert resolve_enhanced_layer(model_cfg) == round(0.7 * model_cfg.encoder_layers + 1e-9)
    assert tuple(model_cfg.gumbel_temp) == (0.5, 0.5, 1.0)
    assert (model_cfg.enhanced_selection, model_cfg.enhanced_sinkhorn_iters) == ("argmax", 3)
    assert (crit_cfg.upper_weight, crit_cfg.gamma, crit_cfg.gamma_final) == (0.1, 24.0, None)


def test_conformer_recipe_mirrors_the_papers_librispeech_setting():
    model_cfg = load_section("conformer_birq_librispeech", "model", BirqConfig)
    raw = load_recipe("conformer_birq_librispeech")
    assert model_cfg.layer_type == "conformer" and model_cfg.encoder_layers == 10
    assert resolve_enhanced_layer(model_cfg) == 7  # "layer 7 of 10"
    assert raw.optimization.lr == [0.0001] and raw.optimizer._name == "adam" and raw.optimizer.weight_decay > 0
    assert raw.dataset.batch_size * raw.distributed_training.distributed_world_size == 64
    # ~155M parameters (the paper's figure)
    model = BirqModel(model_cfg)
    encoder = sum(p.numel() for name, p in model.named_parameters() if "head" not in name)
    assert 140e6 < encoder < 170e6, encoder


def test_tiny_model_builds_with_k_three_of_four():
    model = BirqModel(BirqConfig(**tiny_model_overrides(enhanced_layer=None)))
    assert model.enhanced_layer == 3
    calls = []
    for i, layer in enumerate(model.encoder.layers):
        layer.register_forward_hook(lambda *a, i=i: calls.append(i))
    import torch
    model.train()
    source = torch.randn(2, 16000) * 0.1
    out = model(source, torch.zeros(2, 16000, dtype=torch.bool))
    assert "enhanced_targets" in out
    # label generator: layers 0..2 (k = 3), then the main pass through all four
    assert calls == [0, 1, 2, 0, 1, 2, 3]
    loss, _, log = BirqCriterion(BirqCriterionConfig(), type("T", (), {"cfg": type("C", (), {})})())(
        model, {"id": torch.arange(2), "net_input": {"source": source, "padding_mask": None}})
    assert log["gamma"] == 24.0 and log["gumbel_temp"] == 0.5
