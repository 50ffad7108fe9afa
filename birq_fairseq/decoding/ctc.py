"""CTC decoders usable as fairseq generators (``task.build_generator``).

Both decoders follow the ``generate(models, sample, **kwargs)`` protocol that
``fairseq-generate`` (``fairseq_cli/generate.py``) and ``task.inference_step``
use, and return, per sentence, a list of hypothesis dicts with the keys
generate.py reads::

    {"tokens": LongTensor (dictionary indices, no blanks),
     "score": float (natural log),
     "positional_scores": FloatTensor (one per token, natural log),
     "alignment": None,
     "words": [str, ...]}          # extra, for users of the decoder directly

Emissions are computed the way fairseq's ``examples/speech_recognition/
w2l_decoder.py`` does it: ``model(**net_input)`` (for ``wav2vec_ctc`` the
encoder output: ``encoder_out`` T x B x V and ``padding_mask`` B x T), then
``model.get_normalized_probs(..., log_probs=True)``; the per-utterance number
of valid frames comes from ``padding_mask`` so padding is never decoded.

The blank is ``dictionary.bos()`` (``<s>``), exactly as fairseq's ``ctc``
criterion and ``AudioFinetuningTask.blank_symbol`` use it.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

WORD_BOUNDARY = "|"


def compute_emissions(models, net_input) -> Tuple[torch.Tensor, torch.Tensor]:
    """Batched CTC log-probs ``(B, T, V)`` (float32, CPU) and valid lengths ``(B,)``.

    With several models (an ensemble) the frame posteriors are averaged.
    """
    encoder_input = {k: v for k, v in net_input.items() if k != "prev_output_tokens"}
    all_lprobs, lengths = [], None
    for model in models:
        net_output = model(**encoder_input)
        lprobs = model.get_normalized_probs(net_output, log_probs=True)  # T x B x V
        lprobs = lprobs.transpose(0, 1).float()  # B x T x V
        B, T, _ = lprobs.shape
        pm = net_output.get("padding_mask") if isinstance(net_output, dict) else None
        if pm is not None and pm.dim() == 2:
            if pm.size(1) > T:
                pm = pm[:, :T]
            elif pm.size(1) < T:  # get_logits may left-pad the mask by one frame
                pm = torch.nn.functional.pad(pm, (T - pm.size(1), 0), value=False)
            lens = (~pm).long().sum(-1)
        else:
            lens = torch.full((B,), T, dtype=torch.long, device=lprobs.device)
        all_lprobs.append(lprobs)
        lengths = lens if lengths is None else torch.minimum(lengths, lens)
    if len(all_lprobs) == 1:
        lprobs = all_lprobs[0]
    else:
        lprobs = torch.logsumexp(torch.stack(all_lprobs), dim=0) - math.log(len(all_lprobs))
    return lprobs.cpu().contiguous(), lengths.cpu()


class _CTCGeneratorBase:
    """Common parts: blank/eos bookkeeping and the fairseq ``generate`` entry point."""

    def __init__(self, tgt_dict, blank: Optional[int] = None):
        self.tgt_dict = tgt_dict
        self.blank = tgt_dict.bos() if blank is None else blank
        self.eos = tgt_dict.eos()
        self.pad = tgt_dict.pad()
        # generate.py strips these from hypothesis and reference strings
        self.symbols_to_strip_from_output = {self.blank, self.eos, self.pad}

    @torch.no_grad()
    def generate(self, models, sample, **unused) -> List[List[Dict]]:
        emissions, lengths = compute_emissions(models, sample["net_input"])
        return self.decode(emissions, lengths)

    def decode(self, emissions: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> List[List[Dict]]:
        raise NotImplementedError

    def tokens_to_words(self, tokens: Sequence[int]) -> List[str]:
        letters = "".join(self.tgt_dict[int(t)] for t in tokens)
        return [w for w in letters.split(WORD_BOUNDARY) if w]


class GreedyCTCDecoder(_CTCGeneratorBase):
    """Best path: argmax per frame, collapse repeats, drop blanks.

    ``score`` is the log-probability of the best frame path (sum of per-frame
    maxima); ``positional_scores`` holds, for each output token, the
    log-probability of the frame where that token starts.
    """

    def decode(self, emissions, lengths=None):
        if emissions.dim() == 2:
            emissions = emissions.unsqueeze(0)
        B, T, _ = emissions.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long)
        best, best_idx = emissions.max(dim=-1)  # B x T
        hypos = []
        for b in range(B):
            n = int(lengths[b])
            path = best_idx[b, :n].tolist()
            toks, pos = [], []
            prev = None
            for t, idx in enumerate(path):
                if idx != prev and idx != self.blank:
                    toks.append(idx)
                    pos.append(float(best[b, t]))
                prev = idx
            tokens = torch.tensor(toks, dtype=torch.long)
            hypos.append(
                [
                    {
                        "tokens": tokens,
                        "score": float(best[b, :n].sum()),
                        "positional_scores": torch.tensor(pos, dtype=torch.float),
                        "alignment": None,
                        "words": self.tokens_to_words(toks),
                    }
                ]
            )
        return hypos


def read_lexicon(path: str) -> Dict[str, List[str]]:
    """``word -> first spelling`` from a lexicon file (``WORD<TAB or space>L E T T E R S |``)."""
    lex: Dict[str, List[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ValueError(f"{path}:{lineno}: expected 'WORD spelling...', got {line.rstrip()!r}")
            lex.setdefault(parts[0], parts[1:])
    return lex


class LexiconBeamCTCDecoder(_CTCGeneratorBase):
    """Lexicon-constrained beam search (flashlight-text via torchaudio), optional KenLM.

    Args:
        tgt_dict: fairseq Dictionary whose symbols index the emission columns.
        lexicon: file with one ``WORD  L E T T E R S |`` per line (spellings in
            dictionary symbols, ending with the word boundary ``|``, as
            fairseq/flashlight lexicons do). Only these words can be output.
        kenlm_model: optional KenLM ``.arpa``/``.bin`` over the lexicon's words.
        beam: beam size; beam_size_token, beam_threshold: pruning.
        lm_weight, word_score, unk_score, sil_score: flashlight decoder weights.
    """

    def __init__(
        self,
        tgt_dict,
        lexicon: str,
        kenlm_model: Optional[str] = None,
        beam: int = 50,
        nbest: int = 1,
        beam_size_token: Optional[int] = None,
        beam_threshold: float = 25.0,
        lm_weight: float = 2.0,
        word_score: float = 0.0,
        unk_score: float = float("-inf"),
        sil_score: float = 0.0,
        blank: Optional[int] = None,
    ):
        super().__init__(tgt_dict, blank)
        try:  # here, not at import: only this decoder needs flashlight-text's compiled bindings, and a
            # broken install must not stop greedy decoding or training, which import this module
            from torchaudio.models.decoder import ctc_decoder
        except Exception as e:  # pragma: no cover - environment problem
            raise ImportError(
                "the lexicon decoder needs torchaudio's ctc_decoder and the "
                "flashlight-text package (pip install flashlight-text)"
            ) from e
        if WORD_BOUNDARY not in tgt_dict.indices:
            raise ValueError(f"lexicon decoding needs the word boundary {WORD_BOUNDARY!r} in the dictionary")
        self.lexicon = read_lexicon(lexicon)
        for word, spelling in self.lexicon.items():
            bad = [s for s in spelling if s not in tgt_dict.indices]
            if bad:
                raise ValueError(f"{lexicon}: spelling of {word!r} uses symbols not in the dictionary: {bad}")
        if not lm_weight and kenlm_model is None:
            lm_weight = 0.0
        self.nbest = nbest
        self._decoder = ctc_decoder(
            lexicon=lexicon,
            tokens=list(tgt_dict.symbols),
            lm=kenlm_model,
            nbest=nbest,
            beam_size=beam,
            beam_size_token=beam_size_token,
            beam_threshold=beam_threshold,
            lm_weight=lm_weight if kenlm_model is not None else 0.0,
            word_score=word_score,
            unk_score=unk_score,
            sil_score=sil_score,
            blank_token=tgt_dict[self.blank],
            sil_token=WORD_BOUNDARY,
            unk_word=tgt_dict.unk_word,
        )

    def words_to_tokens(self, words: Sequence[str]) -> List[int]:
        toks: List[int] = []
        for w in words:
            spelling = self.lexicon.get(w)
            if spelling is None:
                toks += [self.tgt_dict.unk(), self.tgt_dict.index(WORD_BOUNDARY)]
                continue
            toks += [self.tgt_dict.index(s) for s in spelling]
            if spelling[-1] != WORD_BOUNDARY:
                toks.append(self.tgt_dict.index(WORD_BOUNDARY))
        return toks

    def decode(self, emissions, lengths=None):
        if emissions.dim() == 2:
            emissions = emissions.unsqueeze(0)
        emissions = emissions.float().cpu().contiguous()
        B, T, _ = emissions.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.int32)
        results = self._decoder(emissions, lengths.to(torch.int32).cpu())
        hypos = []
        for res in results:
            out = []
            for h in res[: self.nbest]:
                words = list(h.words)
                toks = self.words_to_tokens(words)
                n = max(len(toks), 1)
                out.append(
                    {
                        "tokens": torch.tensor(toks, dtype=torch.long),
                        "score": float(h.score),
                        # flashlight returns a sequence score only: spread it over the tokens
                        "positional_scores": torch.full((len(toks),), float(h.score) / n),
                        "alignment": None,
                        "words": words,
                    }
                )
            if not out:
                out.append(
                    {
                        "tokens": torch.zeros(0, dtype=torch.long),
                        "score": float("-inf"),
                        "positional_scores": torch.zeros(0),
                        "alignment": None,
                        "words": [],
                    }
                )
            hypos.append(out)
        return hypos


DECODERS = ("greedy", "lexicon")


def build_ctc_decoder(tgt_dict, decoder: str = "greedy", lexicon: Optional[str] = None,
                      kenlm_model: Optional[str] = None, **beam_options):
    """Factory shared by the ``birq_finetuning`` task and ``python -m birq_fairseq wer``.

    ``beam_options`` are LexiconBeamCTCDecoder's keyword arguments (beam, nbest,
    beam_size_token, beam_threshold, lm_weight, word_score, unk_score, sil_score).
    """
    decoder = str(decoder)
    if decoder == "greedy":
        if kenlm_model or lexicon:
            raise ValueError("--lexicon/--kenlm-model need --ctc-decoder lexicon")
        return GreedyCTCDecoder(tgt_dict)
    if decoder == "lexicon":
        if not lexicon:
            raise ValueError("--ctc-decoder lexicon needs --lexicon FILE (word -> letters ending in '|')")
        return LexiconBeamCTCDecoder(tgt_dict, lexicon, kenlm_model=kenlm_model, **beam_options)
    raise ValueError(f"unknown CTC decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
