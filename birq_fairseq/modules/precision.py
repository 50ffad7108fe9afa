"""Modules whose buffers must keep full precision under fairseq's fp16/bf16 training."""

import torch
import torch.nn as nn


class FullPrecisionModule(nn.Module):
    """A module that follows device moves but ignores dtype casts.

    fairseq's ``common.fp16``/``common.bf16`` training calls ``model.half()`` /
    ``model.bfloat16()``. A filterbank, a random codebook or running statistics cast to
    half precision would change features and labels with the precision mode (and
    overflow sums), so these modules keep their dtypes and compute in fp32 (their
    forward passes disable autocast). Casting inputs/outputs is the caller's business.
    """

    def _apply(self, fn, recurse=True):
        probe = fn(torch.zeros(()))
        if probe.dtype == torch.float32:
            return super()._apply(fn, recurse)
        return super()._apply(lambda t: t.to(probe.device), recurse)
