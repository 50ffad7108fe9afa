"""BiRQ loss: two masked cross-entropies combined by the penalty method.

    loss = w1 * (L_upper + gamma * (L_lower - v^))  =  w1 * L_upper + w2 * (L_lower - v^)

with (by default) L_upper = L_e (enhanced labels) and L_lower = L_a (anchor labels),
v^ the running minimum of an EMA of L_lower (a constant for the gradient), so the
first-order update is w1 * grad L_e + w2 * grad L_a (the paper's Algorithm 1). The
defaults are the paper's: w1 = 0.1, gamma = w2 / w1 = 24 (w2 = 2.4). With the model's
enhanced stream off the loss is exactly L_a: BEST-RQ.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass

logger = logging.getLogger(__name__)

STREAM_CHOICES = ChoiceEnum(["enhanced", "anchor"])


@dataclass
class BirqCriterionConfig(FairseqDataclass):
    upper_stream: STREAM_CHOICES = field(
        default="enhanced", metadata={"help": "stream of the upper-level objective; the other is the lower level"}
    )
    upper_weight: float = field(
        default=0.1,
        metadata={"help": "w1: overall weight of the bilevel loss, w1 * (L_upper + gamma * (L_lower - v^)); "
                  "the paper's w1 = 0.1 (its w2 = w1 * gamma = 2.4)"},
    )
    gamma: float = field(
        default=24.0, metadata={"help": "penalty constant gamma = w2 / w1 at update 0 (the paper's 2.4 / 0.1 = 24)"}
    )
    gamma_final: Optional[float] = field(
        default=None, metadata={"help": "gamma reached after gamma_ramp_updates (None = constant gamma)"}
    )
    gamma_ramp_updates: int = field(default=0, metadata={"help": "updates of the linear gamma ramp"})
    baseline_ema_decay: float = field(
        default=0.99, metadata={"help": "EMA decay of the lower-level loss whose running minimum is v^"}
    )
    enhanced_start_updates: int = field(
        default=0,
        metadata={"help": "warm-up of the upper level: its loss weight is 0 before this update (the update is "
                  "then BEST-RQ's, scaled by w2), w1 from it on; not in the paper (0 = from the start)"},
    )
    collapse_warn_ratio: float = field(
        default=0.2,
        metadata={"help": "collapse guard: warn once when the enhanced code perplexity stays below this "
                  "fraction of the anchor's for collapse_warn_windows windows of collapse_window_updates "
                  "updates (0 = off)"},
    )
    collapse_window_updates: int = field(default=100, metadata={"help": "updates per collapse-guard window"})
    collapse_warn_windows: int = field(default=3, metadata={"help": "consecutive low windows before the warning"})
    diversity_weight: float = field(
        default=0.0,
        metadata={"help": "weight of wav2vec 2.0's codebook-diversity penalty (V - perplexity) / V on the "
                  "enhanced stream's mean soft code distribution; an anti-collapse option beyond the "
                  "reconstructed method (0 = off; acts only with model.enhanced_label_grad=true)"},
    )


def validate_criterion_config(cfg: BirqCriterionConfig) -> None:
    problems = []
    if cfg.upper_weight <= 0:
        problems.append(f"criterion.upper_weight={cfg.upper_weight} must be > 0")
    if cfg.gamma < 0:
        problems.append(f"criterion.gamma={cfg.gamma} must be >= 0")
    if cfg.gamma_final is not None and cfg.gamma_final < 0:
        problems.append(f"criterion.gamma_final={cfg.gamma_final} must be >= 0")
    if cfg.gamma_ramp_updates < 0:
        problems.append(f"criterion.gamma_ramp_updates={cfg.gamma_ramp_updates} must be >= 0")
    if cfg.enhanced_start_updates < 0:
        problems.append(f"criterion.enhanced_start_updates={cfg.enhanced_start_updates} must be >= 0")
    if cfg.collapse_warn_ratio < 0:
        problems.append(f"criterion.collapse_warn_ratio={cfg.collapse_warn_ratio} must be >= 0 (0 = off)")
    if cfg.collapse_window_updates < 1 or cfg.collapse_warn_windows < 1:
        problems.append(f"criterion.collapse_window_updates={cfg.collapse_window_updates} and "
                        f"criterion.collapse_warn_windows={cfg.collapse_warn_windows} must be >= 1")
    if cfg.diversity_weight < 0:
        problems.append(f"criterion.diversity_weight={cfg.diversity_weight} must be >= 0")
    if not 0 <= cfg.baseline_ema_decay < 1:
        problems.append(f"criterion.baseline_ema_decay={cfg.baseline_ema_decay} must be in [0, 1)")
    if problems:
        raise ValueError("invalid BiRQ criterion config:\n  " + "\n  ".join(problems))


def code_perplexity(labels: torch.Tensor, codebook_size: int) -> float:
    """exp(entropy) of the label histogram, averaged over codebooks. labels: (M, N)."""
    if labels.numel() == 0:
        return 0.0
    num_codebooks = labels.size(-1)
    offsets = torch.arange(num_codebooks, device=labels.device) * codebook_size
    counts = torch.bincount((labels + offsets).flatten(), minlength=num_codebooks * codebook_size)
    counts = counts.view(num_codebooks, codebook_size).float()
    probs = counts / counts.sum(-1, keepdim=True)
    entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum(-1)
    return float(torch.exp(entropy).mean())


class CollapseGuard:
    """Warns once when the enhanced labels collapse: their code perplexity stays below
    ``ratio`` times the anchor's for ``windows`` consecutive windows of ``window_updates`` updates.

    ``observe(num_updates, enhanced_ppl, anchor_ppl)`` is fed every training batch's label
    perplexities (the criterion computes them anyway); a window's ratio is that of its mean
    perplexities. Returns the warning line when it is logged, else None. After a warning it
    stays silent until the ratio recovers above the threshold, so the log gets one line per
    collapse, never one per step.
    """

    SWITCHES = ("model.enhanced_selection=argmax model.enhanced_sinkhorn_iters=3 (balanced labels), "
                "model.enhanced_label_grad=false (stop-gradient), model.similarity_temp, "
                "criterion.enhanced_start_updates")

    def __init__(self, ratio: float, window_updates: int, windows: int):
        self.ratio, self.window_updates, self.windows = ratio, window_updates, windows
        self.window = None  # index of the window being summed
        self.sums = [0.0, 0.0, 0]  # enhanced ppl, anchor ppl, batches
        self.low_windows = 0
        self.warned = False

    def observe(self, num_updates: int, enhanced_ppl: float, anchor_ppl: float):
        if self.ratio <= 0:
            return None
        window = num_updates // self.window_updates
        message = None
        if self.window is not None and window != self.window and self.sums[2] > 0:
            message = self._close_window(num_updates)
        if window != self.window:
            self.window, self.sums = window, [0.0, 0.0, 0]
        self.sums[0] += enhanced_ppl
        self.sums[1] += anchor_ppl
        self.sums[2] += 1
        return message

    def _close_window(self, num_updates: int):
        enhanced, anchor = self.sums[0] / self.sums[2], self.sums[1] / self.sums[2]
        if enhanced >= self.ratio * anchor:
            self.low_windows, self.warned = 0, False
            return None
        self.low_windows += 1
        if self.low_windows < self.windows or self.warned:
            return None
        self.warned = True
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return None  # one line per run, not one per rank
        message = (f"enhanced labels collapsed: by update {num_updates} their code perplexity has stayed below "
                   f"{self.ratio:g} x the anchor's for {self.low_windows * self.window_updates} updates "
                   f"(last window {enhanced:.1f} vs {anchor:.1f}); the enhanced stream now carries little "
                   f"beyond BEST-RQ. Switches to try: {self.SWITCHES}")
        logger.warning(message)
        return message


@register_criterion("birq", dataclass=BirqCriterionConfig)
class BirqCriterion(FairseqCriterion):
    def __init__(self, cfg: BirqCriterionConfig, task):
        super().__init__(task)
        validate_criterion_config(cfg)
        self.cfg = cfg
        self.sample_rate = getattr(task.cfg, "sample_rate", 16000)
        self.collapse_guard = CollapseGuard(cfg.collapse_warn_ratio, cfg.collapse_window_updates,
                                            cfg.collapse_warn_windows)

    def gamma_at(self, num_updates: int) -> float:
        if self.cfg.gamma_final is None or self.cfg.gamma_ramp_updates <= 0:
            return self.cfg.gamma if self.cfg.gamma_final is None else self.cfg.gamma_final
        progress = min(1.0, num_updates / self.cfg.gamma_ramp_updates)
        return self.cfg.gamma + (self.cfg.gamma_final - self.cfg.gamma) * progress

    def _lower_loss_baseline(self, model, lower_sum: float, frames: int) -> float:
        """v^ as of the last finished update; in training, record this batch for the next one.

        v^ advances in the task's optimizer_step (PenaltyBaseline.commit), once per update,
        so it does not depend on update_freq. Before the first update there is no v^ yet:
        the batch's own mean is used (penalty gap 0).
        """
        if model.training:
            model.penalty_baseline.accumulate(lower_sum, frames, self.cfg.baseline_ema_decay)
        minimum = float(model.penalty_baseline.minimum)
        return minimum if math.isfinite(minimum) else lower_sum / max(frames, 1)

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        anchor_logits = net_output["anchor_logits"].float()
        anchor_labels = net_output["anchor_labels"]
        frames = anchor_logits.size(0)

        anchor_ce = F.cross_entropy(
            anchor_logits.flatten(0, 1), anchor_labels.flatten(), reduction="none"
        ).view(frames, -1)
        anchor_sum = anchor_ce.mean(-1).sum()
        logging_output = {
            "sample_size": frames,
            "nsentences": sample["id"].numel(),
            "anchor_loss": float(anchor_sum.detach()),
            "anchor_correct": int((anchor_logits.argmax(-1) == anchor_labels).sum()),
            "anchor_count": anchor_labels.numel(),
            "anchor_code_ppl": code_perplexity(anchor_labels, anchor_logits.size(-1)),
            "audio_seconds": self._audio_seconds(sample),
            "num_outputs": 1,  # divides the per-output averages; summed across ranks like the rest
        }

        if "enhanced_logits" not in net_output:
            loss = anchor_sum
        else:
            enhanced_logits = net_output["enhanced_logits"].float()
            targets = net_output["enhanced_targets"]
            # -sum_v z_v log p_v: differentiable in z, so the label generator gets gradient.
            enhanced_sum = -(targets * F.log_softmax(enhanced_logits, dim=-1)).sum(-1).mean(-1).sum()
            target_labels = targets.detach().argmax(-1)
            enhanced_value = float(enhanced_sum.detach())
            upper, lower = (
                (enhanced_sum, anchor_sum) if self.cfg.upper_stream == "enhanced" else (anchor_sum, enhanced_sum)
            )
            lower_value = logging_output["anchor_loss"] if lower is anchor_sum else enhanced_value
            gamma = self.gamma_at(model.num_updates)
            baseline = self._lower_loss_baseline(model, lower_value, frames)
            upper_on = float(model.num_updates >= self.cfg.enhanced_start_updates)  # warm-up: lower level only
            loss = self.cfg.upper_weight * (upper_on * upper + gamma * (lower - baseline * frames))
            if self.cfg.diversity_weight > 0:
                probs = net_output["enhanced_code_logits"].softmax(-1).mean(0)  # (Ne, Ve)
                perplexity = torch.exp(-(probs * torch.log(probs.clamp(min=1e-9))).sum(-1)).mean()
                diversity = (probs.size(-1) - perplexity) / probs.size(-1)
                loss = loss + self.cfg.diversity_weight * diversity * frames
                logging_output["enhanced_diversity"] = float(diversity.detach()) * frames
            enhanced_ppl = code_perplexity(target_labels, enhanced_logits.size(-1))
            if model.training:
                self.collapse_guard.observe(model.num_updates, enhanced_ppl, logging_output["anchor_code_ppl"])
            logging_output.update(
                enhanced_loss=enhanced_value,
                enhanced_correct=int((enhanced_logits.argmax(-1) == target_labels).sum()),
                enhanced_count=target_labels.numel(),
                enhanced_code_ppl=enhanced_ppl,
                penalty_gap=lower_value - baseline * frames,
                gamma=gamma,
                gumbel_temp=model.gumbel_temperature,
            )
        logging_output["loss"] = float(loss.detach())
        return loss, frames, logging_output

    def _audio_seconds(self, sample) -> float:
        source = sample["net_input"]["source"]
        padding = sample["net_input"].get("padding_mask")
        samples = source.numel() - (int(padding.sum()) if padding is not None else 0)
        return samples / self.sample_rate

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = max(total("sample_size"), 1)
        # Outputs may arrive already summed over ranks / micro-batches (fast stat sync).
        outputs = max(total("num_outputs"), 1)
        # Losses in bits per masked frame, as fairseq's other criterions.
        metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        for stream in ("anchor", "enhanced"):
            if not any(f"{stream}_loss" in log for log in logging_outputs):
                continue
            metrics.log_scalar(f"{stream}_loss", total(f"{stream}_loss") / sample_size / math.log(2),
                               sample_size, round=3)
            count = max(total(f"{stream}_count"), 1)
            metrics.log_scalar(f"{stream}_acc", total(f"{stream}_correct") / count, count, round=4)
            metrics.log_scalar(f"{stream}_code_ppl", total(f"{stream}_code_ppl") / outputs, outputs, round=1)
        if any("penalty_gap" in log for log in logging_outputs):
            metrics.log_scalar("penalty_gap", total("penalty_gap") / sample_size / math.log(2),
                               sample_size, round=4)
            if any("enhanced_diversity" in log for log in logging_outputs):
                metrics.log_scalar("enhanced_diversity", total("enhanced_diversity") / sample_size,
                                   sample_size, round=4)
            for key in ("gamma", "gumbel_temp"):
                metrics.log_scalar(key, total(key) / outputs, 0, round=4)
        metrics.log_speed("audio_sec_per_sec", total("audio_seconds"), round=1)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        # True: fairseq then syncs with all_reduce on the training device. False makes it use
        # all_gather_list, which allocates torch.cuda.ByteTensor and crashes multi-process CPU
        # (gloo) runs. Averages are recovered with the summed "num_outputs" count.
        return True
