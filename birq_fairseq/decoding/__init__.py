"""CTC decoding for fairseq-generate and ``python -m birq_fairseq wer``."""

from .ctc import (  # noqa: F401
    DECODERS,
    GreedyCTCDecoder,
    LexiconBeamCTCDecoder,
    build_ctc_decoder,
    compute_emissions,
    read_lexicon,
)
