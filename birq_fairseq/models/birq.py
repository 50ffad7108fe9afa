"""BiRQ: bi-level self-labeling random quantization (BEST-RQ when the enhanced stream is off).

Data path: waveform -> batched log-mel + normalisation -> {anchor labels from stacked
frames; span mask with noise} -> conv subsampling -> encoder (layers 1..k also run once on
the unmasked input -> enhanced labels) -> per-stream heads. The criterion (`birq`) turns
what ``forward`` returns into the two masked cross-entropies and the penalty.
"""

import contextlib
import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from omegaconf import II

from fairseq.data.data_utils import compute_mask_indices, numpy_seed
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.models.wav2vec.wav2vec2 import (
    LAYER_TYPE_CHOICES,
    MASKING_DISTRIBUTION_CHOICES,
    ConformerEncoder,
    TransformerEncoder,
)
from fairseq.modules import GradMultiply, LayerNorm

from ..modules.frontend import FRAMES_PER_STEP, ConvSubsampling, LogMelFrontend
from ..modules.code_balance import LogitCentering, sinkhorn_offset
from ..modules.precision import FullPrecisionModule
from ..modules.quantizer import RandomProjectionQuantizer

logger = logging.getLogger(__name__)

FEATURE_NORMALIZATION_CHOICES = ChoiceEnum(["utterance", "global"])
# How z^(k) is normalised before the enhanced quantizer (the paper says "normalised", not how).
ENHANCED_FEATURE_NORM_CHOICES = ChoiceEnum(["layer", "instance"])
# Which one-hot the enhanced labels are in the forward pass; both carry the Gumbel-softmax gradient.
ENHANCED_SELECTION_CHOICES = ChoiceEnum(["gumbel", "argmax"])


@dataclass
class BirqConfig(FairseqDataclass):
    # Front-end. Encoder frames are 40 ms (4 filterbank frames of 10 ms).
    n_mels: int = field(default=80, metadata={"help": "log-mel filterbank channels"})
    win_length_ms: float = field(default=25.0, metadata={"help": "filterbank window (ms)"})
    hop_length_ms: float = field(default=10.0, metadata={"help": "filterbank hop (ms)"})
    feature_normalization: FEATURE_NORMALIZATION_CHOICES = field(
        default="utterance",
        metadata={"help": "per-utterance mean/variance, or global running statistics frozen "
                  "after global_stats_batches training batches"},
    )
    global_stats_batches: int = field(default=1000, metadata={"help": "batches that update global stats"})
    conv_channels: int = field(default=64, metadata={"help": "channels of the 4x conv subsampling"})
    feature_grad_mult: float = field(
        default=1.0, metadata={"help": "gradient multiplier for the conv subsampling (0 = frozen)"}
    )
    dropout_input: float = field(default=0.0, metadata={"help": "dropout on the encoder input"})

    # Encoder: wav2vec 2.0's field names, so finetuning overrides reach it.
    layer_type: LAYER_TYPE_CHOICES = field(default="transformer", metadata={"help": "transformer or conformer"})
    encoder_layers: int = field(default=12, metadata={"help": "number of encoder layers (L)"})
    encoder_embed_dim: int = field(default=768, metadata={"help": "encoder embedding dimension"})
    encoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "encoder FFN dimension"})
    encoder_attention_heads: int = field(default=12, metadata={"help": "attention heads"})
    activation_fn: str = field(default="gelu", metadata={"help": "FFN activation"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the encoder"})
    attention_dropout: float = field(default=0.1, metadata={"help": "attention dropout"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    encoder_layerdrop: float = field(default=0.0, metadata={"help": "probability of dropping a layer"})
    layer_norm_first: bool = field(default=False, metadata={"help": "pre-LN transformer layers"})
    conv_pos: int = field(default=128, metadata={"help": "convolutional positional embedding kernel"})
    conv_pos_groups: int = field(default=16, metadata={"help": "groups of the positional convolution"})
    pos_conv_depth: int = field(default=1, metadata={"help": "depth of the positional convolution"})
    required_seq_len_multiple: int = field(default=1, metadata={"help": "pad encoder input to a multiple"})
    depthwise_conv_kernel_size: int = field(default=31, metadata={"help": "conformer depthwise kernel"})
    attn_type: str = field(default="", metadata={"help": "'espnet' for conformer attention, else fairseq"})
    pos_enc_type: str = field(default="abs", metadata={"help": "conformer: abs, rel_pos or rope"})
    max_positions: int = field(default=100000, metadata={"help": "max encoder frames (rel_pos)"})
    checkpoint_activations: bool = field(default=False, metadata={"help": "recompute activations"})
    fp16: bool = II("common.fp16")

    # Time masking (fairseq compute_mask_indices semantics, counted in 40 ms encoder
    # frames). BEST-RQ's "each 10 ms frame starts a 400 ms span with p=0.01" is
    # mask_length=10 and mask_prob = 0.01 * 4 * 10 = 0.4. Masked frames get N(0, std^2).
    mask_prob: float = field(default=0.4, metadata={"help": "expected masked fraction (before overlap)"})
    mask_length: int = field(default=10, metadata={"help": "span length in encoder frames (40 ms)"})
    mask_selection: MASKING_DISTRIBUTION_CHOICES = field(default="static", metadata={"help": "span length distribution"})
    mask_other: float = field(default=0.0, metadata={"help": "secondary span length parameter"})
    no_mask_overlap: bool = field(default=False, metadata={"help": "forbid overlapping spans"})
    mask_min_space: int = field(default=1, metadata={"help": "min gap between spans if no overlap"})
    require_same_masks: bool = field(
        default=False, metadata={"help": "same masked count per utterance (fairseq trims by dropping random "
                                 "frames, breaking spans; the losses do not need it)"}
    )
    mask_dropout: float = field(default=0.0, metadata={"help": "drop this fraction of masked frames"})
    mask_noise_std: float = field(default=0.1, metadata={"help": "std of the noise replacing masked frames"})
    mask_after_subsampling: bool = field(
        default=False,
        metadata={"help": "replace masked frames by noise after the conv subsampling (in the normalised encoder "
                  "input), as wav2vec 2.0 / HuBERT mask after their feature encoder: one subsampling pass "
                  "then serves the label generator and the main pass (cheaper). A different model, so off: "
                  "the default masks the filterbank, as BEST-RQ"},
    )
    # Channel masking, as in wav2vec 2.0: on the encoder-input features (width
    # encoder_embed_dim, comparable to wav2vec 2.0's 768), not on the 80 mel bins.
    mask_channel_prob: float = field(default=0.0, metadata={"help": "channel masking probability"})
    mask_channel_length: int = field(default=10, metadata={"help": "channel span length"})
    mask_channel_selection: MASKING_DISTRIBUTION_CHOICES = field(default="static", metadata={"help": "channel span distribution"})
    mask_channel_other: float = field(default=0.0, metadata={"help": "secondary channel span parameter"})
    no_mask_channel_overlap: bool = field(default=False, metadata={"help": "forbid overlapping channel spans"})
    mask_channel_min_space: int = field(default=1, metadata={"help": "min gap between channel spans"})
    mask_channel_before: bool = field(
        default=False, metadata={"help": "accepted for wav2vec 2.0 configs; time masking here acts on the "
                                 "filterbank, so channel masking always follows it"}
    )

    # Anchor stream (BEST-RQ labels): RPQ on stacked normalised filterbank frames.
    anchor_codebook_dim: int = field(default=16, metadata={"help": "anchor RPQ projection dim"})
    anchor_codebook_size: int = field(default=8192, metadata={"help": "anchor codebook entries"})
    anchor_num_codebooks: int = field(default=1, metadata={"help": "independent anchor codebooks"})

    # Enhanced stream (BiRQ labels): RPQ on layer k of the unmasked input.
    enhanced_stream: bool = field(default=True, metadata={"help": "false = BEST-RQ"})
    enhanced_layer: Optional[int] = field(
        default=None,
        metadata={"help": "k: label generator is layers 1..k; unset = round(0.7 * encoder_layers), the "
                  "paper's pilot-study choice (layer 7 of 10)"},
    )
    enhanced_codebook_dim: int = field(default=16, metadata={"help": "enhanced RPQ projection dim"})
    enhanced_codebook_size: int = field(default=8192, metadata={"help": "enhanced codebook entries"})
    enhanced_num_codebooks: int = field(default=1, metadata={"help": "independent enhanced codebooks"})
    enhanced_label_grad: bool = field(
        default=True, metadata={"help": "straight-through gradient into layers 1..k through the labels; "
                                "false = stop-gradient (single-stage HuBERT-like self-labelling)"}
    )
    enhanced_hard_targets: bool = field(
        default=True, metadata={"help": "straight-through one-hot targets (forward one-hot, soft gradient); "
                                "false = the soft Gumbel-softmax distribution is the target"}
    )
    enhanced_dropout: bool = field(
        default=False, metadata={"help": "apply dropout/layerdrop in the label-generating pass"}
    )
    enhanced_checkpoint_activations: bool = field(
        default=False,
        metadata={"help": "recompute the label generator's layers 1..k in the backward pass instead of keeping "
                  "their activations: the same loss and gradients, less memory, one more forward of k layers"},
    )
    similarity_temp: float = field(default=0.1, metadata={"help": "tau_c: cosine-similarity temperature"})
    enhanced_feature_norm: ENHANCED_FEATURE_NORM_CHOICES = field(
        default="layer",
        metadata={"help": "normalisation of z^(k) before the enhanced quantizer: 'layer' = per frame over "
                  "channels; 'instance' = per utterance and channel over its unpadded frames (data2vec's and "
                  "DinoSR's targets: removes the direction all frames share)"},
    )
    enhanced_selection: ENHANCED_SELECTION_CHOICES = field(
        default="argmax",
        metadata={"help": "forward one-hot of the enhanced labels: 'argmax' = the most likely code, with the "
                  "Gumbel-softmax gradient backward (straight-through): no sampling noise in the labels; "
                  "'gumbel' = a hard Gumbel-softmax sample (the paper's literal selection). With "
                  "enhanced_sinkhorn_iters=3 the default: the label generator that stays healthy over 30 k "
                  "updates where the literal one collapses (RESULTS.md, label health)"},
    )
    # Anti-collapse options beyond the paper's text (see modules/code_balance.py); Sinkhorn balancing is
    # on by default with the argmax selection (docs/method.md#label-generator).
    enhanced_centering: float = field(
        default=0.0,
        metadata={"help": "not in the paper: subtract a running mean (this EMA momentum, e.g. 0.9) of the "
                  "enhanced code logits before the Gumbel draw, as DINO centres its teacher; 0 = off"},
    )
    enhanced_sinkhorn_iters: int = field(
        default=3,
        metadata={"help": "not in the paper's text: balance the batch's frames over the enhanced codes with this "
                  "many Sinkhorn-Knopp iterations (as SwAV) before the selection, in training; 0 = off (the "
                  "literal method). On by default with enhanced_selection=argmax (see its help)"},
    )
    gumbel_temp: Tuple[float, float, float] = field(
        default=(0.5, 0.5, 1.0),
        metadata={"help": "Gumbel-softmax temperature (start, end, decay per update), as wav2vec 2.0's "
                  "latent_temp; the paper holds it at 0.5 (an annealed schedule, e.g. (2.0, 0.5, 0.999995), "
                  "is an option)"},
    )
    quantizer_seed: int = field(default=1234, metadata={"help": "seed of both random quantizers"})


# The paper's pilot study puts the label generator at about 70 % of the encoder depth.
PAPER_ENHANCED_LAYER_FRACTION = 0.7


def resolve_enhanced_layer(cfg: BirqConfig) -> int:
    """k of the label generator: ``cfg.enhanced_layer``, or round(0.7 * L) when unset.

    Rounds half up (L = 5 -> 4), never below 1: L = 4 -> 3, 10 -> 7, 12 -> 8.
    """
    if cfg.enhanced_layer is not None:
        return int(cfg.enhanced_layer)
    return max(1, math.floor(PAPER_ENHANCED_LAYER_FRACTION * cfg.encoder_layers + 0.5))


class RelPosConformerEncoder(ConformerEncoder):
    """fairseq's ConformerEncoder (relative/rotary positions), buildable.

    Its parent's __init__ calls ``build_encoder_layer(args, layer_idx=i)``, which the
    Conformer override does not accept in this fairseq snapshot.
    """

    def build_encoder_layer(self, args, **kwargs):
        return super().build_encoder_layer(args)


# fairseq main seeds compute_mask_indices per row from (seed, epoch, index); fairseq
# 0.12.2 (Python <= 3.10) has no such arguments and uses numpy's global generator.
_MASK_TAKES_SEED = "seed" in inspect.signature(compute_mask_indices).parameters


def span_mask(shape, padding_mask, prob, length, selection, other, **kwargs) -> torch.Tensor:
    """fairseq's compute_mask_indices, made reproducible.

    fairseq main draws masks from an unseeded ``np.random.default_rng()`` (0.12.2 from
    numpy's global generator); seeding both from torch's generator (which fairseq reseeds
    every update) makes masks, and so resumed runs, deterministic. Returns a bool tensor
    of ``shape`` on the CPU.
    """
    seed = int(torch.randint(0, 2**31 - 1, ()))
    if _MASK_TAKES_SEED:
        kwargs.update(seed=seed, epoch=0, indices=torch.arange(shape[0]))
    with numpy_seed(seed):
        mask = compute_mask_indices(shape, padding_mask, prob, length, selection, other, **kwargs)
    return torch.from_numpy(mask)


def _installed_fairseq_supports(**kwargs) -> bool:
    # Some fairseq snapshots crash in these branches (numpy Generator.randint, np.int).
    try:
        with torch.random.fork_rng(devices=[]):  # probing must not shift the model's initialisation
            span_mask((1, 50), None, 0.2, 5, kwargs.pop("mask_type", "static"), 0.0, **kwargs)
        return True
    except (AttributeError, TypeError):
        return False


def validate_config(cfg: BirqConfig) -> None:
    """Reject bad values with the name of the field, before anything is built."""
    problems = []

    def need(ok, message):
        if not ok:
            problems.append(message)

    for name in ("anchor_codebook_dim", "anchor_codebook_size", "anchor_num_codebooks",
                 "enhanced_codebook_dim", "enhanced_codebook_size", "enhanced_num_codebooks",
                 "encoder_layers", "encoder_embed_dim", "encoder_attention_heads", "n_mels",
                 "conv_channels", "mask_length"):
        need(getattr(cfg, name) > 0, f"model.{name}={getattr(cfg, name)} must be > 0")
    for name in ("mask_prob", "mask_channel_prob", "mask_dropout", "dropout", "attention_dropout",
                 "activation_dropout", "encoder_layerdrop", "dropout_input"):
        value = getattr(cfg, name)
        need(0.0 <= value <= 1.0, f"model.{name}={value} must be in [0, 1]")
    need(cfg.similarity_temp > 0, f"model.similarity_temp={cfg.similarity_temp} must be > 0")
    need(0 <= cfg.enhanced_centering < 1, f"model.enhanced_centering={cfg.enhanced_centering} must be in [0, 1)")
    need(cfg.enhanced_sinkhorn_iters >= 0,
         f"model.enhanced_sinkhorn_iters={cfg.enhanced_sinkhorn_iters} must be >= 0")
    start, end, decay = cfg.gumbel_temp
    need(start > 0 and end > 0, f"model.gumbel_temp={tuple(cfg.gumbel_temp)}: temperatures must be > 0")
    need(0 < decay <= 1, f"model.gumbel_temp={tuple(cfg.gumbel_temp)}: decay must be in (0, 1]")
    need(cfg.mask_noise_std >= 0, f"model.mask_noise_std={cfg.mask_noise_std} must be >= 0")
    need(cfg.feature_grad_mult >= 0, f"model.feature_grad_mult={cfg.feature_grad_mult} must be >= 0")
    if cfg.encoder_attention_heads > 0:
        need(cfg.encoder_embed_dim % cfg.encoder_attention_heads == 0,
             f"model.encoder_embed_dim={cfg.encoder_embed_dim} must be divisible by "
             f"model.encoder_attention_heads={cfg.encoder_attention_heads}")
    for prefix in ("mask", "mask_channel"):
        overlap, selection = getattr(cfg, f"no_{prefix}_overlap"), getattr(cfg, f"{prefix}_selection")
        if overlap and not _installed_fairseq_supports(no_overlap=True, min_space=1):
            problems.append(f"model.no_{prefix}_overlap=true is not supported by the installed fairseq's "
                            "compute_mask_indices; leave it false")
        if selection == "uniform" and not _installed_fairseq_supports(mask_type="uniform"):
            problems.append(f"model.{prefix}_selection=uniform is not supported by the installed fairseq's "
                            "compute_mask_indices; use static, normal or poisson")
    need(not (cfg.enhanced_checkpoint_activations and cfg.enhanced_dropout and cfg.encoder_layerdrop > 0),
         "model.enhanced_checkpoint_activations=true with model.enhanced_dropout=true needs "
         "model.encoder_layerdrop=0: layerdrop draws from numpy's generator, which the recomputation "
         "does not replay, so it could drop other layers than the forward pass did")
    if cfg.enhanced_stream:
        need(1 <= resolve_enhanced_layer(cfg) <= cfg.encoder_layers,
             f"model.enhanced_layer={cfg.enhanced_layer} is outside the encoder: must be in "
             f"1..{cfg.encoder_layers} (model.encoder_layers), or set model.enhanced_stream=false")
    if problems:
        raise ValueError("invalid BiRQ model config:\n  " + "\n  ".join(problems))


class PenaltyBaseline(FullPrecisionModule):
    """Running estimate v^ of min L_lower: the running minimum of an EMA of the lower loss.

    Kept as buffers of the model so it is checkpointed and resumes exactly. It advances
    once per optimizer update: the criterion ``accumulate``s every forward pass's lower
    loss (all micro-batches of the update), the task's ``optimizer_step`` calls ``commit``
    on every rank, which all-reduces the update's total and applies one EMA step. So v^
    does not depend on update_freq or the number of ranks, and nothing is pending when a
    checkpoint is written.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("ema", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("minimum", torch.tensor(float("inf"), dtype=torch.float64))
        self._pending = [0.0, 0.0]  # lower-loss sum and frames of the current update (not saved)
        self._decay = None

    def accumulate(self, lower_sum: float, frames: int, decay: float) -> None:
        self._pending[0] += lower_sum
        self._pending[1] += frames
        self._decay = decay

    @torch.no_grad()
    def commit(self) -> None:
        """Fold the finished update into v^. Collective: call on every rank, once per update."""
        stats = torch.tensor(self._pending, dtype=torch.float64, device=self.ema.device)
        self._pending = [0.0, 0.0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)  # identical v^ on every rank
        if stats[1] > 0 and self._decay is not None:
            self.update(float(stats[0] / stats[1]), self._decay)

    @torch.no_grad()
    def update(self, value: float, decay: float) -> float:
        if torch.isnan(self.ema):
            self.ema.fill_(value)
        else:
            self.ema.mul_(decay).add_((1 - decay) * value)
        self.minimum.copy_(torch.minimum(self.minimum, self.ema))
        return float(self.minimum)


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module):
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@register_model("birq", dataclass=BirqConfig)
class BirqModel(BaseFairseqModel):
    def __init__(self, cfg: BirqConfig):
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        self.num_updates = 0
        self.enhanced_layer = resolve_enhanced_layer(cfg)
        embed_dim = cfg.encoder_embed_dim

        self.frontend = LogMelFrontend(
            n_mels=cfg.n_mels,
            win_length_ms=cfg.win_length_ms,
            hop_length_ms=cfg.hop_length_ms,
            normalization=cfg.feature_normalization,
            global_stats_batches=cfg.global_stats_batches,
        )
        self.subsampling = ConvSubsampling(cfg.n_mels, cfg.conv_channels, embed_dim)
        self.layer_norm = LayerNorm(embed_dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        if cfg.layer_type == "conformer" and cfg.pos_enc_type in ("rel_pos", "rope"):
            self.encoder = RelPosConformerEncoder(cfg)
        else:
            self.encoder = TransformerEncoder(cfg)

        # Pretraining-only modules: set to None by remove_pretraining_modules().
        stacked_dim = FRAMES_PER_STEP * cfg.n_mels
        self.anchor_quantizer = RandomProjectionQuantizer(
            stacked_dim, cfg.anchor_codebook_dim, cfg.anchor_codebook_size,
            cfg.anchor_num_codebooks, seed=cfg.quantizer_seed,
        )
        self.anchor_head = nn.Linear(embed_dim, cfg.anchor_num_codebooks * cfg.anchor_codebook_size)
        self.enhanced_quantizer = None
        self.enhanced_head = None
        self.enhanced_centering = None
        if cfg.enhanced_stream:
            self.enhanced_quantizer = RandomProjectionQuantizer(
                embed_dim, cfg.enhanced_codebook_dim, cfg.enhanced_codebook_size,
                cfg.enhanced_num_codebooks, seed=cfg.quantizer_seed + 1,
            )
            self.enhanced_head = nn.Linear(embed_dim, cfg.enhanced_num_codebooks * cfg.enhanced_codebook_size)
            if cfg.enhanced_centering > 0:
                self.enhanced_centering = LogitCentering(
                    cfg.enhanced_num_codebooks, cfg.enhanced_codebook_size, cfg.enhanced_centering)
        self.penalty_baseline = PenaltyBaseline()

    @classmethod
    def build_model(cls, cfg: BirqConfig, task=None):
        return cls(cfg)

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    @property
    def gumbel_temperature(self) -> float:
        start, end, decay = self.cfg.gumbel_temp
        return max(start * decay ** self.num_updates, end)

    # ----------------------------------------------------------------- pieces
    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels) fp32 filterbank -> (B, T/4, D) normalised subsampled features, in the
        encoder's dtype (before the input dropout)."""
        feats = feats.to(self.layer_norm.weight.dtype)  # fairseq's fp16/bf16 training halves the encoder
        if self.cfg.feature_grad_mult > 0:
            x = self.subsampling(feats)
            if self.cfg.feature_grad_mult != 1.0:
                x = GradMultiply.apply(x, self.cfg.feature_grad_mult)
        else:
            with torch.no_grad():
                x = self.subsampling(feats)
        return self.layer_norm(x)

    def encoder_input(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels) fp32 filterbank -> (B, T/4, D) encoder input in the encoder's dtype."""
        return self.dropout_input(self.embed(feats))

    def time_mask(self, step_padding: torch.Tensor) -> torch.Tensor:
        """(B, T') padding -> (B, T') bool spans to mask, never on padding."""
        mask = span_mask(
            tuple(step_padding.shape), step_padding.cpu(), self.cfg.mask_prob, self.cfg.mask_length,
            self.cfg.mask_selection, self.cfg.mask_other, min_masks=1, no_overlap=self.cfg.no_mask_overlap,
            min_space=self.cfg.mask_min_space, require_same_masks=self.cfg.require_same_masks,
            mask_dropout=self.cfg.mask_dropout,
        )
        return mask.to(step_padding.device) & ~step_padding

    def channel_mask(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.mask_channel_prob <= 0:
            return x
        b, t, c = x.shape
        # min_masks=1: fairseq raises when a row draws no span, which happens for narrow
        # (tiny) encoders; at wav2vec 2.0 widths (768, length 64) rows draw several anyway.
        channels = span_mask(
            (b, c), None, self.cfg.mask_channel_prob, self.cfg.mask_channel_length,
            self.cfg.mask_channel_selection, self.cfg.mask_channel_other, min_masks=1,
            no_overlap=self.cfg.no_mask_channel_overlap, min_space=self.cfg.mask_channel_min_space,
        )
        return x.masked_fill(channels.to(x.device)[:, None, :], 0.0)

    def run_encoder(self, x, step_padding, last_layer: Optional[int] = None):
        """Encoder on (B, T', D); ``last_layer`` (0-based) stops early and skips the final LN."""
        # No padding: fairseq's faster unpadded path. torch.export cannot capture a branch on tensor
        # values, so an exported program always takes the padded path (exact for unpadded input too).
        padding = step_padding if torch.compiler.is_exporting() or step_padding.any() else None
        x, layer_results = self.encoder.extract_features(x, padding, last_layer)
        if self.encoder.layer_norm_first and last_layer is None:
            x = self.encoder.layer_norm(x)
        return x, layer_results

    def enhanced_features(self, h: torch.Tensor, step_padding: torch.Tensor,
                          frames: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, T', D) output of layer k, (B, T') padding -> (B, T', D) fp32 z^(k), normalised as
        model.enhanced_feature_norm says: per frame (layer) or per utterance over time (instance).
        With ``frames`` ((B, T') bool), only those frames: (M, D), normalised as in the full result
        (the instance statistics still come from every unpadded frame; a per-frame norm is computed
        on the selected frames alone, so training does not normalise the unmasked ones it drops)."""
        if self.cfg.enhanced_feature_norm == "instance":
            h = h.float()
            valid = (~step_padding).unsqueeze(-1).to(h.dtype)  # (B, T', 1)
            count = valid.sum(1, keepdim=True).clamp(min=1.0)
            mean = (h * valid).sum(1, keepdim=True) / count
            var = ((h - mean).square() * valid).sum(1, keepdim=True) / count
            z = (h - mean) * torch.rsqrt(var + 1e-5)
            return z if frames is None else z[frames]
        h = (h if frames is None else h[frames]).float()
        return F.layer_norm(h, (h.size(-1),))

    def enhanced_code_logits(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) normalised z^(k) (``enhanced_features``) -> (..., Ne, Ve) fp32 logits the enhanced
        labels are drawn from: cosine to the frozen codebook / tau_c, minus the running centre when
        model.enhanced_centering is on (updated in training only)."""
        logits = self.enhanced_quantizer.similarity(z.float()) / self.cfg.similarity_temp
        if self.enhanced_centering is not None:
            logits = self.enhanced_centering(logits)
        return logits

    def select_enhanced_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """(M, Ne, Ve) fp32 code logits -> (M, Ne, Ve) targets: one-hots in the forward pass (a
        Gumbel sample, or the argmax with model.enhanced_selection=argmax) whose backward is the
        Gumbel-softmax gradient at tau_g; or the soft sample (model.enhanced_hard_targets=false,
        whatever the selection)."""
        tau = self.gumbel_temperature
        # soft targets are the whole relaxed sample: there is no one-hot to select
        if self.cfg.enhanced_selection == "argmax" and self.cfg.enhanced_hard_targets:
            soft = F.gumbel_softmax(logits, tau=tau, hard=False)
            hard = F.one_hot(logits.argmax(-1), logits.size(-1)).to(soft.dtype)
            return hard - soft.detach() + soft
        return F.gumbel_softmax(logits, tau=tau, hard=self.cfg.enhanced_hard_targets)

    def enhanced_targets(self, feats, step_padding, loss_frames, embedded=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Label generator: layers 1..k on the unmasked input -> z^(k) -> code logits -> one-hots.

        ``embedded``: the unmasked ``embed(feats)`` when the main pass shares it
        (mask_after_subsampling); otherwise the generator runs its own subsampling.
        Returns the targets (M, num_codebooks, codebook_size): one-hot in the forward
        pass, the Gumbel-softmax gradient in the backward pass (when enhanced_label_grad);
        and the fp32 code logits they were drawn from (same shape; already in the graph),
        for the criterion's optional diversity penalty.
        """
        generator = (self.subsampling, self.layer_norm, self.dropout_input, self.encoder)

        def layers_1_to_k(inputs):
            # The mode switch lives inside: a checkpointed recomputation must run in it too.
            with contextlib.nullcontext() if self.cfg.enhanced_dropout else _eval_mode(*generator):
                x = self.encoder_input(inputs) if embedded is None else self.dropout_input(inputs)
                return self.run_encoder(x, step_padding, self.enhanced_layer - 1)[0]

        grad_ctx = contextlib.nullcontext() if self.cfg.enhanced_label_grad else torch.no_grad()
        with grad_ctx:
            inputs = feats if embedded is None else embedded
            if self.cfg.enhanced_checkpoint_activations and torch.is_grad_enabled():
                # Recomputed in backward with the RNG state of the forward (dropout replays).
                h = torch.utils.checkpoint.checkpoint(layers_1_to_k, inputs, use_reentrant=False)
            else:
                h = layers_1_to_k(inputs)
            logits = self.enhanced_code_logits(self.enhanced_features(h, step_padding, loss_frames))
            if self.cfg.enhanced_sinkhorn_iters > 0 and self.training:
                logits = logits + sinkhorn_offset(logits, self.cfg.enhanced_sinkhorn_iters)
            with torch.autocast(device_type=logits.device.type, enabled=False):
                return self.select_enhanced_labels(logits), logits

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        mask: bool = True,
        features_only: bool = False,
        layer: Optional[int] = None,
        corpus_key=None,
    ):
        """source (B, S) waveform, padding_mask (B, S) True at padding.

        features_only: {"x": (B, T', D), "padding_mask": (B, T'), "layer_results", "mask_indices"}.
        Otherwise, on the M masked frames: {"anchor_logits": (M, Na, Va), "anchor_labels":
        (M, Na)} and, with the enhanced stream, {"enhanced_logits": (M, Ne, Ve),
        "enhanced_targets": (M, Ne, Ve) straight-through one-hots, "enhanced_code_logits":
        (M, Ne, Ve) the logits they were drawn from}.
        """
        feats, frame_lengths = self.frontend(source, padding_mask)
        batch, frames, n_mels = feats.shape
        steps = frames // FRAMES_PER_STEP
        step_padding = (
            torch.arange(steps, device=feats.device)[None, :] >= (frame_lengths // FRAMES_PER_STEP)[:, None]
        )

        mask_indices = None
        masked_feats = feats
        shared = self.cfg.mask_after_subsampling  # mask the encoder input, not the filterbank
        if mask and self.cfg.mask_prob > 0:
            mask_indices = self.time_mask(step_padding)
            if not shared:
                frame_mask = mask_indices.repeat_interleave(FRAMES_PER_STEP, dim=1)[..., None]
                noise = torch.randn_like(feats) * self.cfg.mask_noise_std
                masked_feats = torch.where(frame_mask, noise, feats)

        if not features_only:
            if self.anchor_quantizer is None:
                raise RuntimeError("pretraining modules were removed; call with features_only=True")
            if mask_indices is None:
                raise ValueError("pretraining needs mask=True and model.mask_prob > 0: "
                                 "the losses are computed on masked frames only")
        loss_frames = mask_indices
        # The label generator runs first so that autograd runs its backward last, after
        # the main pass's activations are freed: lower peak memory, same gradients.
        enhanced = None
        embedded = self.embed(feats) if shared else None  # one subsampling pass for both
        if not features_only and self.enhanced_quantizer is not None:
            enhanced = self.enhanced_targets(feats, step_padding, loss_frames, embedded=embedded)

        if shared:
            x = self.dropout_input(embedded)
            if mask_indices is not None:
                noise = torch.randn_like(x) * self.cfg.mask_noise_std
                x = torch.where(mask_indices[..., None], noise, x)
        else:
            x = self.encoder_input(masked_feats)
        if mask:
            x = self.channel_mask(x)
        x, layer_results = self.run_encoder(x, step_padding, layer)

        if features_only:
            return {"x": x, "padding_mask": step_padding, "layer_results": layer_results,
                    "mask_indices": mask_indices}

        predicted = x[loss_frames]  # (M, D)
        stacked = feats.reshape(batch, steps, FRAMES_PER_STEP * n_mels)[loss_frames]
        result = {
            "anchor_logits": self.anchor_head(predicted).view(
                -1, self.cfg.anchor_num_codebooks, self.cfg.anchor_codebook_size),
            "anchor_labels": self.anchor_quantizer(stacked),
        }
        if self.enhanced_quantizer is not None:
            result["enhanced_logits"] = self.enhanced_head(predicted).view(
                -1, self.cfg.enhanced_num_codebooks, self.cfg.enhanced_codebook_size)
            result["enhanced_targets"], result["enhanced_code_logits"] = enhanced
        return result

    def extract_features(self, source, padding_mask, mask=False, layer=None, corpus_key=None):
        """The contract of fairseq's Wav2VecEncoder (wav2vec_ctc)."""
        return self.forward(source, padding_mask, mask=mask, features_only=True, layer=layer)

    def remove_pretraining_modules(self, last_layer=None):
        # None, not del: a pretraining state dict still loads with strict=True.
        self.anchor_quantizer = None
        self.anchor_head = None
        self.enhanced_quantizer = None
        self.enhanced_head = None
        self.enhanced_centering = None
        self.penalty_baseline = None
        if last_layer is not None:
            self.encoder.layers = nn.ModuleList(
                layer for i, layer in enumerate(self.encoder.layers) if i <= last_layer
            )
