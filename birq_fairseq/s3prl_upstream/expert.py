"""s3prl upstream expert for BiRQ checkpoints (s3prl's ``UpstreamExpert`` interface).

    from birq_fairseq.s3prl_upstream import birq
    upstream = birq(ckpt="pt/checkpoint_best.pt").eval()          # or ckpt="fbank"
    hidden_states = upstream([wav1, wav2])["hidden_states"]       # 1-D 16 kHz float tensors
    # L + 1 tensors (B, T, D); upstream.get_downsample_rates("hidden_states") == 640

The hidden states are :mod:`birq_fairseq.upstream`'s (the encoder input, then every layer's
output; one stacked filterbank for ``fbank``), so s3prl's ``Featurizer`` weighs the same
states as ``birq-fairseq superb``. The expert subclasses ``torch.nn.Module``, not s3prl's
``UpstreamBase`` (s3prl is not a dependency: 0.4.18 imports torchaudio APIs that 2.11
removed); s3prl's runners need only ``forward``, ``get_downsample_rates`` and the module
methods.

Lengths, and why the expert pads twice:

- input: a clip shorter than the front-end's receptive field (880 samples: a 400-sample
  window and 3 more 160-sample hops for one 40 ms step) is zero-padded to it. s3prl's own
  padding (to 0.05 s = 800 samples) is shorter and would leave it no frame;
- output: every state has ``max(len(wav)) // 640 + 1`` frames, the length s3prl's
  ``S3PRLUpstream`` expects (its ``_match_length``). The encoder yields
  ``((len - 400) // 160 + 1) // 4`` frames, one or two fewer; each utterance's frames after
  its own last one repeat that last frame, which is what ``_match_length`` does itself (and
  it asserts on a shortfall of half the frames, which very short clips would have). So an
  utterance's states do not depend on the batch it came in, and s3prl's length arithmetic
  (``len // 640 + 1`` in ``S3PRLUpstream``, ``round(len / 640)`` in the legacy
  ``Featurizer``) never reads past them.
"""

from typing import Dict, List, Optional

import torch
import torch.nn as nn

from birq_fairseq.upstream import collate, load_upstream

HIDDEN_STATES = "hidden_states"


class UpstreamExpert(nn.Module):
    """``UpstreamExpert(ckpt, **kwargs)``: a frozen BiRQ checkpoint (or ``"fbank"``) for s3prl.

    ``ckpt``: a BiRQ pretraining checkpoint, a finetuned (``wav2vec_ctc``) one, or ``"fbank"``.
    Other keyword arguments s3prl passes (``model_config``, ``refresh``, ...) are accepted
    and ignored: the checkpoint holds the model's configuration.
    """

    def __init__(self, ckpt: Optional[str] = None, model_config: Optional[str] = None, **kwargs):
        super().__init__()
        if not ckpt:
            raise ValueError("the birq upstream needs ckpt=PATH to a BiRQ checkpoint, or ckpt='fbank' "
                             "(s3prl's run_downstream.py: -k PATH)")
        self.upstream = load_upstream(ckpt)

    def get_downsample_rates(self, key: str) -> int:
        """Input samples per output frame for every feature: 160-sample hop x 4 frames = 640."""
        return self.upstream.downsample_rate

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, object]:
        """wavs: list of B 1-D float waveforms (16 kHz, any lengths, on the model's device).

        Returns ``{"hidden_states": [N x (B, T, D)], "last_hidden_state": (B, T, D)}`` with
        ``T = max(len(wav)) // 640 + 1`` (see the module docstring).
        """
        if len(wavs) == 0:
            raise ValueError("the birq upstream needs at least one waveform")
        lengths = [int(w.numel()) for w in wavs]
        source, padding_mask = collate(wavs, self.upstream.min_samples, self.upstream.normalize)
        states, frames = self.upstream(source, padding_mask if padding_mask.any() else None)
        total = max(lengths) // self.get_downsample_rates(HIDDEN_STATES) + 1
        states = [pad_with_last_frame(h, frames, total) for h in states]
        return {HIDDEN_STATES: states, "last_hidden_state": states[-1]}


def pad_with_last_frame(h: torch.Tensor, frames: torch.Tensor, total: int) -> torch.Tensor:
    """(B, T', D), valid frames (B,) -> (B, total, D): each row's frames at and after its
    ``frames[b]``-th repeat its last valid frame (T' <= total always: see the module docstring)."""
    steps = torch.arange(total, device=h.device)
    last = (frames.to(h.device) - 1).clamp(min=0)
    index = torch.minimum(steps[None, :], last[:, None])  # (B, total)
    return h.gather(1, index[..., None].expand(-1, -1, h.size(-1)))
