"""The random-projection quantizer (BEST-RQ), used for both BiRQ label streams."""

import math

import torch
import torch.nn.functional as F

from .precision import FullPrecisionModule


class RandomProjectionQuantizer(FullPrecisionModule):
    """Frozen random projection + frozen random codebook(s) -> discrete labels.

    ``projection`` is Xavier-uniform initialised, ``codebook`` is standard normal;
    both are buffers: saved in checkpoints, never touched by the optimizer, drawn from
    their own generator seeded by ``seed`` so every rank builds identical copies, and
    kept in fp32 whatever the training precision.

    Shapes:
        similarity: (..., input_dim) -> (..., num_codebooks, codebook_size), float32
            cosine similarity between the projected input and every codebook entry.
        forward:    (..., input_dim) -> (..., num_codebooks), int64 labels
            index of the nearest entry after l2-normalising both sides.
    """

    def __init__(
        self,
        input_dim: int,
        codebook_dim: int,
        codebook_size: int,
        num_codebooks: int = 1,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (
            ("input_dim", input_dim),
            ("codebook_dim", codebook_dim),
            ("codebook_size", codebook_size),
            ("num_codebooks", num_codebooks),
        ):
            if value <= 0:
                raise ValueError(f"RandomProjectionQuantizer: {name} must be > 0, got {value}")
        self.input_dim = input_dim
        self.codebook_dim = codebook_dim
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks

        generator = torch.Generator().manual_seed(seed)
        bound = math.sqrt(6.0 / (input_dim + codebook_dim))  # Xavier uniform
        projection = (
            torch.rand(num_codebooks, input_dim, codebook_dim, generator=generator) * 2 - 1
        ) * bound
        codebook = torch.randn(num_codebooks, codebook_size, codebook_dim, generator=generator)
        self.register_buffer("projection", projection)
        # Entries are stored normalised: the nearest-entry search is a cosine argmax.
        self.register_buffer("codebook", F.normalize(codebook, dim=-1))

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        # Distances in fp32 even under fp16/bf16 autocast: ties and near-ties in half
        # precision would make labels depend on the precision mode.
        with torch.autocast(device_type=x.device.type, enabled=False):
            projected = F.normalize(torch.einsum("...d,ndk->...nk", x.float(), self.projection), dim=-1)
            return torch.einsum("...nk,nvk->...nv", projected, self.codebook)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.similarity(x).argmax(dim=-1)

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, codebook_dim={self.codebook_dim}, "
            f"codebook_size={self.codebook_size}, num_codebooks={self.num_codebooks}"
        )
