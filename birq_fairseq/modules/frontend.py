"""Speech front-end: batched log-mel filterbank, normalisation, 4x conv subsampling."""

import math
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

from .precision import FullPrecisionModule

# Encoder frames are 4 filterbank frames (40 ms): the conv subsampling factor and the
# number of frames the anchor quantizer stacks are one constant.
FRAMES_PER_STEP = 4


def num_fbank_frames(num_samples: torch.Tensor, win_length: int, hop_length: int) -> torch.Tensor:
    """Frames an unpadded (``center=False``) STFT yields; 0 for clips shorter than a window."""
    frames = torch.div(num_samples - win_length, hop_length, rounding_mode="floor") + 1
    return frames.clamp(min=0)


def min_samples_for_one_step(sample_rate: int, win_length_ms: float = 25.0, hop_length_ms: float = 10.0) -> int:
    """Shortest clip (in samples) that produces one encoder frame: the front-end's receptive field."""
    win = int(round(sample_rate * win_length_ms / 1000))
    hop = int(round(sample_rate * hop_length_ms / 1000))
    return win + (FRAMES_PER_STEP - 1) * hop


class LogMelFrontend(FullPrecisionModule):
    """Waveform -> normalised log-mel filterbank, on the model's device, for a whole batch.

    Shapes:
        waveform: (B, S) float, padding_mask: (B, S) bool (True = padding) or None
        returns features (B, T, n_mels) with T a multiple of FRAMES_PER_STEP, and the
        per-utterance number of valid frames (B,) (also a multiple of FRAMES_PER_STEP).
        Frames past an utterance's length are zero.

    ``normalization``:
        "utterance": zero mean / unit variance per mel bin over each utterance's frames.
        "global": running statistics over the first ``global_stats_batches`` training
        batches (all-reduced across ranks), frozen afterwards; saved in checkpoints.
    Features are fp32 whatever the training precision.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        win_length_ms: float = 25.0,
        hop_length_ms: float = 10.0,
        normalization: str = "utterance",
        global_stats_batches: int = 1000,
    ):
        super().__init__()
        if normalization not in ("utterance", "global"):
            raise ValueError(f"feature_normalization must be 'utterance' or 'global', got {normalization!r}")
        self.win_length = int(round(sample_rate * win_length_ms / 1000))
        self.hop_length = int(round(sample_rate * hop_length_ms / 1000))
        self.n_mels = n_mels
        self.normalization = normalization
        self.global_stats_batches = global_stats_batches
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=self.win_length,
            win_length=self.win_length,
            hop_length=self.hop_length,
            n_mels=n_mels,
            center=False,
            power=2.0,
        )
        # torchaudio's periodic Hann window is a view of one a sample longer; with its own storage
        # torch.export.save stores it as it stores every other weight (and does not warn)
        self.melspec.spectrogram.window = self.melspec.spectrogram.window.clone()
        if normalization == "global":
            self.register_buffer("stats_sum", torch.zeros(n_mels, dtype=torch.float64))
            self.register_buffer("stats_sumsq", torch.zeros(n_mels, dtype=torch.float64))
            self.register_buffer("stats_frames", torch.zeros((), dtype=torch.float64))
            self.register_buffer("stats_batches", torch.zeros((), dtype=torch.long))

    def output_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        frames = num_fbank_frames(num_samples, self.win_length, self.hop_length)
        return frames - frames % FRAMES_PER_STEP

    @torch.no_grad()
    def forward(
        self, waveform: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if padding_mask is None:
            num_samples = torch.full((waveform.size(0),), waveform.size(1), device=waveform.device)
        else:
            num_samples = (~padding_mask).sum(-1)
        lengths = self.output_lengths(num_samples)
        receptive_field = self.win_length + (FRAMES_PER_STEP - 1) * self.hop_length
        if waveform.size(1) < receptive_field:
            raise ValueError(
                f"every clip in the batch is shorter than the front-end's receptive field "
                f"({receptive_field} samples); longest clip has {waveform.size(1)} samples"
            )
        # The filterbank stays in fp32 under autocast: log of small powers underflows in fp16.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            mel = self.melspec.mel_scale(self.power_spectrogram(waveform.float()))  # (B, n_mels, frames)
            # Frames cover the padded length (as the longest clip, which fairseq's collater
            # pads to): a shape, not a value read from the data, so the front-end traces and
            # exports with dynamic lengths and needs no device sync.
            max_frames = mel.size(-1) - mel.size(-1) % FRAMES_PER_STEP
            feats = torch.log(mel + 1e-6).transpose(1, 2)[:, :max_frames]
        valid = torch.arange(max_frames, device=feats.device)[None, :] < lengths[:, None]
        feats = self._normalize(feats, valid)
        return feats.masked_fill(~valid[..., None], 0.0), lengths

    def power_spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, S) fp32 -> (B, n_fft // 2 + 1, frames) |STFT|^2, torchaudio's ``Spectrogram``.

        The STFT is torchaudio's (its settings and window), but the power is re^2 + im^2:
        torchaudio's ``abs().pow(2)`` takes a complex abs (a hypot per bin, then a square) that
        was a quarter of a 64 s tiny-model update's profile on one core (examples/benchmarks/README.md);
        the two agree to fp32 rounding (relative 2.4e-7).
        """
        if torch.onnx.is_in_onnx_export():
            return self._power_spectrogram_by_convolution(waveform)
        spec = self.melspec.spectrogram
        stft = torch.stft(waveform, n_fft=spec.n_fft, hop_length=spec.hop_length, win_length=spec.win_length,
                          window=spec.window, center=spec.center, pad_mode=spec.pad_mode, normalized=False,
                          onesided=spec.onesided, return_complex=True)
        return stft.real.square() + stft.imag.square()

    def _power_spectrogram_by_convolution(self, waveform: torch.Tensor) -> torch.Tensor:
        """The same windowed DFT as a strided convolution, for ONNX export.

        torch's ONNX exporter cannot export the complex STFT, and onnxruntime's STFT operator
        (real/imaginary pairs, opset 17) is far less precise: measured on near-silence against a
        float64 reference, log-mel error 1.5e-2 for it, 2e-4 for this and for torch's own FFT.
        """
        spec = self.melspec.spectrogram
        n_fft = spec.n_fft
        if spec.window.numel() != n_fft:
            raise NotImplementedError("ONNX export needs win_length == n_fft")
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft
        basis = torch.cat([torch.cos(angle), torch.sin(angle)]) * spec.window.double()  # (2K, n_fft)
        out = F.conv1d(waveform[:, None], basis.to(waveform)[:, None, :], stride=spec.hop_length)
        real, imag = out.split(k.numel(), dim=1)
        return real.pow(2) + imag.pow(2)

    def _normalize(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        weights = valid[..., None].to(feats.dtype)
        if self.normalization == "utterance":
            count = weights.sum(1, keepdim=True).clamp(min=1)
            mean = (feats * weights).sum(1, keepdim=True) / count
            var = (((feats - mean) ** 2) * weights).sum(1, keepdim=True) / count
            return (feats - mean) / (var + 1e-5).sqrt()

        if self.training and int(self.stats_batches) < self.global_stats_batches:
            stats = torch.cat(
                [
                    (feats * weights).sum((0, 1)).double(),
                    (feats.pow(2) * weights).sum((0, 1)).double(),
                    weights.sum().double().reshape(1),
                ]
            )
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(stats)
            self.stats_sum += stats[: self.n_mels]
            self.stats_sumsq += stats[self.n_mels : 2 * self.n_mels]
            self.stats_frames += stats[-1]
            self.stats_batches += 1
        # a check on a buffer's value, which torch.export cannot capture (birq_fairseq.export runs it eagerly first)
        if not torch.compiler.is_exporting() and float(self.stats_frames) == 0:
            raise RuntimeError(
                "feature_normalization='global' has no statistics yet: train at least one batch "
                "(or use feature_normalization='utterance')"
            )
        mean = self.stats_sum / self.stats_frames
        var = (self.stats_sumsq / self.stats_frames - mean.pow(2)).clamp(min=0)
        return ((feats - mean.to(feats.dtype)) / (var + 1e-5).sqrt().to(feats.dtype))


class ConvSubsampling(nn.Module):
    """Two stride-2 3x3 conv blocks over (time, mel) then a linear map: 4x fewer frames.

    Shapes: (B, T, n_mels) with T a multiple of 4 -> (B, T // 4, output_dim).
    """

    def __init__(self, n_mels: int, channels: int, output_dim: int):
        super().__init__()
        if channels <= 0:
            raise ValueError(f"conv_channels must be > 0, got {channels}")
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
        )
        freq_out = ((n_mels - 1) // 2 + 1 - 1) // 2 + 1
        self.proj = nn.Linear(channels * freq_out, output_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.conv(feats.unsqueeze(1))  # (B, C, T/4, F/4)
        b, c, t, f = x.shape
        return self.proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f))
