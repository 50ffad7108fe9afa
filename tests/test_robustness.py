"""Robustness (issue #6): config validation (item 2), finetuning-side normalize mismatch,
safe checkpoint loading (item 6). Also the small shared helpers the other robustness test
files import (tiny in-process model/criterion, tiny corpora, ``fairseq-hydra-train`` runs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from audio_fixtures import write_manifest  # noqa: E402

BIN = Path(sys.executable).parent
HYDRA_TRAIN = str(BIN / "fairseq-hydra-train")

# Keys that make a CPU run tiny: 2 encoder layers, label generator = layer 1.
TINY_MODEL = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                  conv_channels=4, conv_pos=8, conv_pos_groups=2, dropout=0.0, attention_dropout=0.0,
                  mask_prob=0.4, mask_length=3, anchor_codebook_size=64, enhanced_codebook_size=64,
                  enhanced_layer=1, gumbel_temp=(2.0, 0.5, 0.995), fp16=False)


# --------------------------------------------------------------------------- in-process helpers
def tiny_cfg(**overrides):
    from birq_fairseq.models.birq import BirqConfig

    kw = dict(TINY_MODEL)
    kw.update(overrides)
    return BirqConfig(**kw)


def tiny_model(**overrides):
    from birq_fairseq.models.birq import BirqModel

    torch.manual_seed(0)
    return BirqModel(tiny_cfg(**overrides))


def tiny_criterion(**overrides):
    from birq_fairseq.criterions.birq_criterion import BirqCriterion, BirqCriterionConfig

    task = types.SimpleNamespace(cfg=types.SimpleNamespace(sample_rate=16000))
    return BirqCriterion(BirqCriterionConfig(**overrides), task)


# --------------------------------------------------------------------------- subprocess helpers
def make_corpus(data: Path, n_train: int = 8, n_valid: int = 2, seed: int = 0,
                min_seconds: float = 1.0, max_seconds: float = 2.0) -> Path:
    write_manifest(str(data), "train", n_train, seed=seed, min_seconds=min_seconds, max_seconds=max_seconds)
    write_manifest(str(data), "valid", n_valid, seed=seed + 100, min_seconds=min_seconds, max_seconds=max_seconds)
    return data


TINY_OVERRIDES = [
    "model.encoder_layers=2", "model.enhanced_layer=1", "model.encoder_embed_dim=32",
    "model.encoder_ffn_embed_dim=64", "model.encoder_attention_heads=2", "model.conv_channels=4",
    "model.conv_pos=8", "model.conv_pos_groups=2", "model.anchor_codebook_size=64",
    "model.enhanced_codebook_size=64", "common.log_interval=1", "dataset.disable_validation=true",
]


def train_cmd(data: Path, out: Path, *overrides: str, user_dir: Optional[Path] = None) -> List[str]:
    return [HYDRA_TRAIN, "--config-dir", str(REPO / "examples/pretrain"), "--config-name", "tiny_birq",
            f"common.user_dir={user_dir or REPO / 'birq_fairseq'}", f"task.data={data}",
            f"checkpoint.save_dir={out / 'ckpt'}", f"hydra.run.dir={out / 'hydra'}",
            *TINY_OVERRIDES, *overrides]


def run_train(data: Path, out: Path, *overrides: str, env: Optional[Dict[str, str]] = None,
              check: bool = True, timeout: int = 300, user_dir: Optional[Path] = None) -> str:
    proc = subprocess.run(train_cmd(data, out, *overrides, user_dir=user_dir), capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    log = proc.stdout + proc.stderr
    (out / "train.log").parent.mkdir(parents=True, exist_ok=True)
    (out / "train.log").write_text(log)
    if check:
        assert proc.returncode == 0, log[-4000:]
    return log


INNER = re.compile(r"\[train_inner\]\[INFO\] - .*")


def train_inner(log: str) -> Dict[int, Dict[str, float]]:
    """{num_updates: {key: value}} from `train_inner` lines (log_interval=1)."""
    out = {}
    for line in INNER.findall(log):
        fields = dict(kv.split("=", 1) for kv in re.findall(r"(\w+=[^,\s]+)", line))
        vals = {}
        for k, v in fields.items():
            try:
                vals[k] = float(v)
            except ValueError:
                pass
        out[int(vals["num_updates"])] = vals
    return out


_PRETRAINED: Dict[str, Path] = {}


def pretrained_checkpoint(tmp_path_factory) -> Path:
    """A real pretraining checkpoint from 2 CPU updates (built once per session)."""
    if "ckpt" not in _PRETRAINED:
        root = tmp_path_factory.mktemp("pretrained")
        data = make_corpus(root / "data", n_train=4, n_valid=1, min_seconds=0.6, max_seconds=1.0)
        run_train(data, root, "optimization.max_update=2")
        _PRETRAINED["ckpt"] = root / "ckpt" / "checkpoint_last.pt"
        _PRETRAINED["data"] = data
    return _PRETRAINED["ckpt"]


# --------------------------------------------------------------------------- item 2: config validation
@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(enhanced_layer=0), "model.enhanced_layer=0"),
        (dict(enhanced_layer=3), "model.enhanced_layer=3"),  # encoder has 2 layers
        (dict(anchor_codebook_size=0), "model.anchor_codebook_size=0"),
        (dict(anchor_codebook_dim=-4), "model.anchor_codebook_dim=-4"),
        (dict(anchor_num_codebooks=0), "model.anchor_num_codebooks=0"),
        (dict(enhanced_codebook_size=-1), "model.enhanced_codebook_size=-1"),
        (dict(enhanced_codebook_dim=0), "model.enhanced_codebook_dim=0"),
        (dict(enhanced_num_codebooks=0), "model.enhanced_num_codebooks=0"),
        (dict(similarity_temp=0.0), "model.similarity_temp=0.0"),
        (dict(similarity_temp=-0.1), "model.similarity_temp=-0.1"),
        (dict(gumbel_temp=(0.0, 0.5, 0.99)), "model.gumbel_temp="),
        (dict(gumbel_temp=(2.0, -0.5, 0.99)), "model.gumbel_temp="),
        (dict(gumbel_temp=(2.0, 0.5, 0.0)), "decay"),
        (dict(mask_prob=-0.1), "model.mask_prob=-0.1"),
        (dict(mask_prob=1.5), "model.mask_prob=1.5"),
        (dict(mask_channel_prob=2.0), "model.mask_channel_prob=2.0"),
    ],
)
def test_model_config_rejected_with_field_name(overrides, field):
    from birq_fairseq.models.birq import BirqModel

    with pytest.raises(ValueError, match="invalid BiRQ model config") as err:
        BirqModel.build_model(tiny_cfg(**overrides))
    assert field in str(err.value), str(err.value)


def test_enhanced_layer_message_explains_range():
    from birq_fairseq.models.birq import BirqModel

    with pytest.raises(ValueError) as err:
        BirqModel.build_model(tiny_cfg(enhanced_layer=5))
    msg = str(err.value)
    assert "outside the encoder" in msg and "1..2" in msg and "model.enhanced_stream=false" in msg, msg
    # with the enhanced stream off the layer index is irrelevant (BEST-RQ)
    BirqModel.build_model(tiny_cfg(enhanced_layer=5, enhanced_stream=False))


def test_all_problems_reported_at_once():
    from birq_fairseq.models.birq import BirqModel

    with pytest.raises(ValueError) as err:
        BirqModel.build_model(tiny_cfg(anchor_codebook_size=0, mask_prob=3.0, similarity_temp=0.0))
    msg = str(err.value)
    for f in ("model.anchor_codebook_size", "model.mask_prob", "model.similarity_temp"):
        assert f in msg, msg


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(gamma=-1.0), "criterion.gamma=-1.0"),
        (dict(gamma_final=-0.5), "criterion.gamma_final=-0.5"),
        (dict(gamma_ramp_updates=-3), "criterion.gamma_ramp_updates=-3"),
        (dict(baseline_ema_decay=1.0), "criterion.baseline_ema_decay=1.0"),
    ],
)
def test_criterion_config_rejected_with_field_name(overrides, field):
    with pytest.raises(ValueError, match="invalid BiRQ criterion config") as err:
        tiny_criterion(**overrides)
    assert field in str(err.value), str(err.value)


def test_valid_config_builds_and_gamma_zero_allowed():
    """gamma = 0 is a valid config, and it switches the penalty off: the loss is w1 * L_upper
    exactly (here L_upper = the enhanced cross-entropy), whatever v^ is, and the lower level
    (the anchor head) gets no gradient."""
    import numpy as np
    import torch.nn.functional as F

    model = tiny_model()
    model.train()
    criterion = tiny_criterion(gamma=0.0, upper_weight=0.3)
    g = torch.Generator().manual_seed(0)
    source = torch.randn(2, 16000, generator=g) * 0.1
    padding = torch.zeros_like(source, dtype=torch.bool)
    sample = {"id": torch.arange(2), "net_input": {"source": source, "padding_mask": padding}}

    def seeded(fn, seed=7):
        torch.manual_seed(seed)
        np.random.seed(seed)
        return fn()

    for step in range(2):  # step 0: no v^ yet (batch mean); step 1: v^ from the committed update
        loss, frames, log = seeded(lambda: criterion(model, sample), seed=7 + step)
        out = seeded(lambda: model(**sample["net_input"]), seed=7 + step)
        logits, targets = out["enhanced_logits"], out["enhanced_targets"]
        assert frames == logits.size(0) > 0
        # Independent L_upper: per-frame cross-entropy against the one-hot labels' indices,
        # averaged over the codebooks, summed over the masked frames.
        upper = F.cross_entropy(logits.flatten(0, 1), targets.argmax(-1).flatten(), reduction="sum") / logits.size(1)
        assert float(loss) == pytest.approx(0.3 * float(upper), rel=1e-5)
        assert log["gamma"] == 0.0 and log["enhanced_loss"] == pytest.approx(float(upper), rel=1e-5)
        if step == 1:
            assert log["penalty_gap"] != 0  # v^ is set (another mask, another anchor loss): gamma = 0 still ignores it
        anchor_grads = torch.autograd.grad(loss, list(model.anchor_head.parameters()), allow_unused=True)
        assert all(gr is None or not gr.any() for gr in anchor_grads)
        model.penalty_baseline.commit()
    # With gamma > 0 the same batch's loss does include the anchor stream.
    loss_penalised, _, _ = seeded(lambda: tiny_criterion(gamma=1.0, upper_weight=0.3)(model, sample), seed=8)
    assert float(loss_penalised) != pytest.approx(float(loss), rel=1e-5)


# --------------------------------------------------------------------------- finetuning-side mismatch
@pytest.mark.e2e
def test_finetune_normalize_mismatch_is_an_assertion(tmp_path_factory):
    """Documented behaviour (docs/troubleshooting.md): fairseq's Wav2VecEncoder asserts that
    task.normalize matches the pretraining checkpoint's (BiRQ pretrains with normalize=false
    because the model normalises its own filterbank)."""
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecEncoder

    ckpt = pretrained_checkpoint(tmp_path_factory)
    data = str(_PRETRAINED["data"])
    cfg = Wav2Vec2CtcConfig(w2v_path=str(ckpt), normalize=True, data=data)
    with pytest.raises(AssertionError, match="data normalization is the same"):
        Wav2VecEncoder(cfg, output_size=8)
    cfg = Wav2Vec2CtcConfig(w2v_path=str(ckpt), normalize=False, data=data)
    enc = Wav2VecEncoder(cfg, output_size=8)
    assert enc.w2v_model.anchor_quantizer is None  # pretraining modules removed, strict load passed


# --------------------------------------------------------------------------- item 6: safe loading
@pytest.mark.e2e
def test_pretraining_checkpoint_loads_weights_only(tmp_path_factory):
    from fairseq import checkpoint_utils

    ckpt = pretrained_checkpoint(tmp_path_factory)
    state = torch.load(ckpt)  # PyTorch >= 2.6 default: weights_only=True
    state_explicit = torch.load(ckpt, weights_only=True)
    for s in (state, state_explicit):
        assert s["model"]["anchor_quantizer.projection"].shape[-1] == 16
        assert "enhanced_quantizer.codebook" in s["model"]
        assert "penalty_baseline.minimum" in s["model"]
    state2 = checkpoint_utils.load_checkpoint_to_cpu(str(ckpt))
    assert state2["cfg"]["model"]["_name"] == "birq"
    assert state2["optimizer_history"][-1]["num_updates"] == 2
    for k, v in state["model"].items():
        assert torch.equal(v, state2["model"][k]), k


SAFE_GLOBALS_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from fairseq.data.dictionary import Dictionary
    d = Dictionary(); d.add_symbol("A"); d.add_symbol("B")
    path = sys.argv[1]
    torch.save({"model": {"w": torch.zeros(2)}, "task_state": {"target_dictionary": d}}, path)
    try:
        torch.load(path)
        print("LOADED_WITHOUT_ALLOWLIST")
    except Exception as e:
        print("REFUSED:", "Unsupported global" in str(e), "fairseq.data.dictionary.Dictionary" in str(e))
    from birq_fairseq.safe_globals import allow_fairseq_checkpoint_globals
    allow_fairseq_checkpoint_globals(); allow_fairseq_checkpoint_globals()  # idempotent
    s = torch.load(path)
    assert s["task_state"]["target_dictionary"].index("B") == d.index("B")
    print("LOADED_WITH_ALLOWLIST")
    # still safe: an arbitrary class stays refused
    import collections
    torch.save({"x": collections.OrderedDict, "f": print}, path + ".evil")
    try:
        torch.load(path + ".evil"); print("EVIL_LOADED")
    except Exception:
        print("EVIL_REFUSED")
    """
)


def test_safe_globals_allow_dictionary_only(tmp_path):
    if not (REPO / "birq_fairseq" / "safe_globals.py").exists():
        pytest.skip("birq_fairseq/safe_globals.py not present yet")
    # separate process: the allow-list is global state of torch.serialization
    proc = subprocess.run([sys.executable, "-c", SAFE_GLOBALS_SCRIPT, str(tmp_path / "ft.pt")],
                          capture_output=True, text=True, timeout=120, cwd=str(REPO))
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "REFUSED: True True" in out, out
    assert "LOADED_WITH_ALLOWLIST" in out, out
    assert "EVIL_REFUSED" in out, out
