"""Frozen upstreams for SUPERB-style evaluation: every hidden layer of a BiRQ encoder, or fbank.

An upstream maps a batch of waveforms to a list of hidden states, all at the encoder's 40 ms
rate (a 160-sample hop x 4 filterbank frames = 640 samples):

    upstream(source (B, S) float, padding_mask (B, S) bool, True = padding)
        -> (hidden_states: list of N tensors (B, T', D), frame_lengths (B,) int64)

- :class:`BirqUpstream`: a BiRQ checkpoint (pretraining, or finetuned ``wav2vec_ctc`` from
  one). N = L + 1 for L encoder layers: the input of layer 1 (the subsampled filterbank
  after the positional convolution and, for post-LN layers, the input layer norm) and the
  output of every layer; the last one is the encoder's output as ``extract_features``
  returns it (after the final layer norm for pre-LN layers). For post-LN layers these are
  the encoder input followed by fairseq's ``layer_results``; the same states s3prl's
  wav2vec 2.0 / HuBERT experts hook (each layer's input, then the encoder output).
- :class:`FbankUpstream` (``fbank``, the no-upstream baseline): N = 1, the model's log-mel
  filterbank (80 bins, 25 ms / 10 ms, utterance-normalised) with 4 frames stacked
  (D = 320), so it runs at the encoder's frame rate.

Frame lengths: ``((samples - 400) // 160 + 1) // 4`` (the front-end drops a partial
window and a partial 4-frame step); a clip shorter than :data:`min_samples` (880 samples at
16 kHz) has no frame, so :func:`collate` pads such clips with zeros to that length.

:func:`load_upstream` takes ``"fbank"`` or a checkpoint path; a checkpoint of the wrong kind
raises :class:`birq_fairseq.checkpoints.CheckpointError` with one line naming it.
"""

import os
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from birq_fairseq.loading import load_birq_encoder
from birq_fairseq.modules.frontend import FRAMES_PER_STEP, LogMelFrontend, min_samples_for_one_step

FBANK = "fbank"
SAMPLE_RATE = 16000


def collate(wavs: Sequence[torch.Tensor], min_samples: int, normalize: bool = False
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """1-D waveforms -> ``(source (B, S), padding_mask (B, S) True at padding)``.

    Clips shorter than ``min_samples`` are zero-padded to it, and the padding counts as
    audio (otherwise the encoder gives them no frame). ``normalize``: zero mean, unit
    variance per clip, over its own samples (fairseq's ``task.normalize``, which
    wav2vec 2.0 large models are trained with), before padding.
    """
    if len(wavs) == 0:
        raise ValueError("no waveforms to encode")
    wavs = [w.reshape(-1).float() for w in wavs]
    if normalize:
        wavs = [F.layer_norm(w, w.shape) for w in wavs]
    wavs = [F.pad(w, (0, min_samples - len(w))) if len(w) < min_samples else w for w in wavs]
    lengths = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
    source = nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    padding_mask = torch.arange(source.size(1), device=source.device)[None, :] >= lengths[:, None]
    return source, padding_mask


def encoder_hidden_states(model, source: torch.Tensor, padding_mask: Optional[torch.Tensor]
                          ) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Every hidden state of a BiRQ model (eval mode): see the module docstring.

    source (B, S), padding_mask (B, S) or None -> (L + 1 tensors (B, T', D), frame lengths (B,)).
    The layer inputs are read with forward pre-hooks on ``model.encoder.layers`` (as s3prl
    does): fairseq's Conformer encoder fills ``layer_results`` only when asked to stop at a
    layer, which skips the final layer norm; the hooks see both encoder kinds the same way.
    """
    inputs: List[torch.Tensor] = []

    def keep_input(module, args):
        inputs.append(args[0])  # (T', B, D): fairseq's layers run time-first

    hooks = [layer.register_forward_pre_hook(keep_input) for layer in model.encoder.layers]
    try:
        out = model.extract_features(source, padding_mask, mask=False)
    finally:
        for hook in hooks:
            hook.remove()
    x, frame_padding = out["x"], out["padding_mask"]  # (B, T', D), (B, T')
    if len(inputs) != len(model.encoder.layers):  # layerdrop skips layers in training mode only
        raise RuntimeError(f"{len(inputs)} of {len(model.encoder.layers)} encoder layers ran: "
                           "put the model in eval mode")
    # fairseq may pad the time axis to a multiple (required_seq_len_multiple): cut it back
    states = [h.transpose(0, 1)[:, : x.size(1)] for h in inputs] + [x]
    return states, (~frame_padding).sum(-1)


class FrozenUpstream(nn.Module):
    """Base of the upstreams: always in eval mode (no dropout or layerdrop), no gradients.

    Attributes: ``sample_rate``, ``normalize`` (per-clip waveform normalisation),
    ``min_samples`` (shortest clip with one frame), ``downsample_rate`` (samples per frame),
    ``num_hidden_states`` (N), ``hidden_size`` (D), ``path`` (checkpoint or ``"fbank"``).
    A subclass with these and ``forward(source, padding_mask) -> (N states (B, T', D), lengths (B,))``
    can be passed, built, to :func:`birq_fairseq.superb.run_superb` (encoders this package does
    not load, e.g. examples/reference/speechbrain_bestrq.py); its ``path`` keys the feature cache.
    """

    def train(self, mode: bool = True):
        return super().train(False)  # s3prl calls .train() on upstreams it does not finetune

    def freeze(self):
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()


class BirqUpstream(FrozenUpstream):
    """A frozen BiRQ encoder's L + 1 hidden states (see the module docstring)."""

    def __init__(self, model, task_cfg, path: Optional[str] = None):
        super().__init__()
        self.model = model
        self.freeze()
        self.path = path
        self.sample_rate = int(getattr(task_cfg, "sample_rate", SAMPLE_RATE))
        self.normalize = bool(getattr(task_cfg, "normalize", False))
        frontend = model.frontend
        self.min_samples = frontend.win_length + (FRAMES_PER_STEP - 1) * frontend.hop_length
        self.downsample_rate = frontend.hop_length * FRAMES_PER_STEP
        self.num_hidden_states = len(model.encoder.layers) + 1
        self.hidden_size = int(model.cfg.encoder_embed_dim)

    @torch.no_grad()
    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        return encoder_hidden_states(self.model, source, padding_mask)


class FbankUpstream(FrozenUpstream):
    """The no-upstream baseline: log-mel filterbank, 4 frames stacked to 40 ms (D = 4 x 80)."""

    def __init__(self, n_mels: int = 80, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        self.frontend = LogMelFrontend(sample_rate=sample_rate, n_mels=n_mels, normalization="utterance")
        self.freeze()
        self.path = FBANK
        self.sample_rate = sample_rate
        self.normalize = False
        self.min_samples = min_samples_for_one_step(sample_rate)
        self.downsample_rate = self.frontend.hop_length * FRAMES_PER_STEP
        self.num_hidden_states = 1
        self.hidden_size = FRAMES_PER_STEP * n_mels

    @torch.no_grad()
    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        feats, frame_lengths = self.frontend(source, padding_mask)  # (B, T, n_mels), T a multiple of 4
        b, t, n_mels = feats.shape
        stacked = feats.reshape(b, t // FRAMES_PER_STEP, FRAMES_PER_STEP * n_mels)
        return [stacked], frame_lengths // FRAMES_PER_STEP


def load_upstream(spec: str):
    """``"fbank"`` -> :class:`FbankUpstream`; a checkpoint path -> :class:`BirqUpstream`.

    Raises FileNotFoundError for a missing file and
    :class:`~birq_fairseq.checkpoints.CheckpointError` (one line naming the file) for a
    checkpoint that holds no BiRQ encoder.
    """
    if spec == FBANK:
        return FbankUpstream()
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"upstream checkpoint not found: {spec} (or pass '{FBANK}' for the filterbank)")
    model, task_cfg = load_birq_encoder(spec)
    return BirqUpstream(model, task_cfg, path=spec)
