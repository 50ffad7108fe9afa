"""Anti-collapse options for the enhanced labels (not part of the paper's method; off by default).

Both act on the enhanced code logits *before* the Gumbel draw and keep the labels
differentiable: they add an offset that is a constant for the gradient, so the
straight-through gradient into layers 1..k is the one of the plain method.

* ``LogitCentering`` subtracts a running mean of the logits per code, as DINO centres its
  teacher's outputs: a code that wins for most frames gets pushed down until others win.
* ``sinkhorn_offset`` turns the batch's logits into a balanced assignment of frames to
  codes (Sinkhorn-Knopp, as SwAV) and returns the offset that makes the softmax of
  ``logits + offset`` equal to it.
"""

import math

import torch
import torch.distributed as dist

from .precision import FullPrecisionModule


class LogitCentering(FullPrecisionModule):
    """Running per-code mean of the code logits, subtracted before the Gumbel draw.

    Shapes: forward (M, N, V) fp32 logits -> (M, N, V), the same logits minus the centre.
    The centre (N, V) is a buffer (checkpointed, identical on every rank: the batch mean
    is all-reduced) updated after use in training: c <- momentum * c + (1 - momentum) * mean.
    """

    def __init__(self, num_codebooks: int, codebook_size: int, momentum: float):
        super().__init__()
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"model.enhanced_centering={momentum} must be in (0, 1) (0 = off)")
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(num_codebooks, codebook_size))
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        centered = logits - self.center.to(logits.dtype)
        if self.training:
            self._update(logits.detach())
        return centered

    @torch.no_grad()
    def _update(self, logits: torch.Tensor) -> None:
        stats = torch.cat([logits.float().sum(0).flatten(), logits.new_tensor([logits.size(0)], dtype=torch.float)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        # torch.where instead of Python branches: no host sync per step. The first batch
        # sets the centre; a batch without frames (on every rank) leaves it as it is.
        frames = stats[-1]
        mean = (stats[:-1] / frames.clamp(min=1)).view_as(self.center)
        updated = torch.where(self.initialised, self.center * self.momentum + (1 - self.momentum) * mean, mean)
        self.center.copy_(torch.where(frames > 0, updated, self.center))
        self.initialised.logical_or_(frames > 0)


@torch.no_grad()
def sinkhorn_offset(logits: torch.Tensor, iterations: int) -> torch.Tensor:
    """Offset (M, N, V) such that softmax(logits + offset) is the balanced assignment.

    Sinkhorn-Knopp in log space on this rank's M frames (as SwAV's per-GPU version): the
    frames' code distributions are alternately normalised so that each code gets M / V of
    the mass and each frame sums to one. Returns a constant for the gradient.
    """
    log_q = logits.float().transpose(0, 1)  # (N, M, V)
    frames, codes = log_q.size(1), log_q.size(2)
    log_q = log_q - log_q.logsumexp(dim=(1, 2), keepdim=True)
    for _ in range(iterations):
        log_q = log_q - log_q.logsumexp(dim=1, keepdim=True) - math.log(codes)
        log_q = log_q - log_q.logsumexp(dim=2, keepdim=True) - math.log(frames)
    log_q = log_q - log_q.logsumexp(dim=2, keepdim=True)  # each frame a distribution
    return (log_q.transpose(0, 1) - logits.float().log_softmax(-1)).to(logits.dtype)
