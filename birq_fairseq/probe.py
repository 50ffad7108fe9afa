"""Label-quality probe: how much do a checkpoint's frame codes say about the characters spoken?

    birq-fairseq probe --pretrained PT.pt --aligner FT.pt --data DATA --subset test \\
        [--json probe.json] [--device cuda]

For a BiRQ / BEST-RQ *pretraining* checkpoint (model ``birq``) and a labelled manifest split
(``<subset>.tsv`` + ``<subset>.ltr``, ``dict.ltr.txt``), per label stream — ``anchor`` (the
random-projection codes of 4 stacked normalised filterbank frames) and, when the checkpoint has
one, ``enhanced`` (codes of layer k on the unmasked input) — the frame-level agreement between
the codes and character labels, with HuBERT's cluster-quality metrics (Hsu et al. 2021, sec. on
teacher quality; ``fairseq/examples/hubert/measure_teacher_quality.py``, whose functions are
used as they are):

- ``char_purity`` (HuBERT's phone purity): E_code[max_char p(char | code)], the accuracy of
  predicting the character from the code by majority vote;
- ``cluster_purity``: E_char[max_code p(code | char)];
- ``pnmi``: I(char; code) / H(char), the fraction of the character uncertainty the code removes;
- ``code_perplexity``: exp(H(code)), the number of codes effectively used on these frames;
- ``pnmi_chance`` / ``char_purity_chance``: the same with the codes shuffled over the frames.
  The plug-in estimate is biased upwards when codes are many and frames few (8192 codes on a
  small test set score well even when unrelated): compare streams and checkpoints by
  ``pnmi - pnmi_chance``.

Character labels per 40 ms frame come from a CTC forced alignment
(:func:`torchaudio.functional.forced_align`) of each transcript with a *finetuned* CTC
checkpoint (``wav2vec_ctc`` over a BiRQ encoder, e.g. the supervised topline), whose encoder
frames are the same 40 ms steps as the codes. The word boundary ``|`` is a label like any
letter. Codes are the argmax of the code logits the training labels are drawn from (no Gumbel
noise; with ``enhanced_centering`` the running centre is subtracted, as in training).

:func:`probe_over_training` runs the probe over a series of pretraining checkpoints (aligning
once) for "PNMI over training" plots.
"""

import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchaudio.functional as AF
from fairseq import utils
from fairseq.examples.hubert.measure_teacher_quality import comp_norm_mutual_info, comp_purity

from birq_fairseq.checkpoints import require_birq_pretraining, torch_open
from birq_fairseq.decoding.ctc import compute_emissions
from birq_fairseq.loading import load_finetuned, load_pretrained_birq
from birq_fairseq.modules.code_balance import sinkhorn_offset
from birq_fairseq.modules.frontend import FRAMES_PER_STEP

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- metrics
def joint_distribution(labels: np.ndarray, codes: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p(label, code) over paired frames: ``(p_xy (n_labels, n_codes), label values, code values)``.

    Only the labels and codes that occur are rows/columns (as HuBERT's ``comp_joint_prob``).
    """
    labels, codes = np.asarray(labels).ravel(), np.asarray(codes).ravel()
    if labels.shape != codes.shape:
        raise ValueError(f"{labels.size} labels and {codes.size} codes: one of each per frame is needed")
    if labels.size == 0:
        raise ValueError("no frames to measure")
    label_values, label_idx = np.unique(labels, return_inverse=True)
    code_values, code_idx = np.unique(codes, return_inverse=True)
    counts = np.bincount(label_idx * len(code_values) + code_idx, minlength=len(label_values) * len(code_values))
    p_xy = counts.reshape(len(label_values), len(code_values)).astype(np.float64)
    return p_xy / p_xy.sum(), label_values, code_values


def _hubert_metrics(labels: np.ndarray, codes: np.ndarray) -> Dict[str, float]:
    p_xy, label_values, code_values = joint_distribution(labels, codes)
    _, char_purity = comp_purity(p_xy, axis=0)
    _, cluster_purity = comp_purity(p_xy, axis=1)
    mi, pnmi, _, h_char, h_code = comp_norm_mutual_info(p_xy)
    if len(label_values) == 1:  # H(char) = 0: nothing to explain; HuBERT's formula would give 0 / 0
        pnmi = float("nan")
    return {"pnmi": float(pnmi), "char_purity": float(char_purity), "cluster_purity": float(cluster_purity),
            "mi": float(mi), "h_char": float(h_char), "h_code": float(h_code), "codes_used": int(len(code_values))}


def label_quality(labels: np.ndarray, codes: np.ndarray, chance_shuffles: int = 5, seed: int = 0) -> Dict[str, float]:
    """HuBERT's cluster-quality metrics of ``codes`` against reference ``labels`` (one each per frame).

    Returns ``char_purity`` (HuBERT's "ref pur"), ``cluster_purity`` ("hyp pur"), ``pnmi``
    ("MI/H(ref)"), ``mi``, ``h_char``, ``h_code`` (nats), ``code_perplexity`` = exp(H(code)),
    ``codes_used``, ``frames``; invariant to renaming the codes or the labels.

    And the chance levels ``pnmi_chance`` / ``char_purity_chance``: the same metrics with the
    codes shuffled over the frames (mean of ``chance_shuffles`` seeded shuffles), which keeps
    both marginals and breaks the pairing. The plug-in MI of HuBERT's formula is biased upwards
    by about (codes - 1)(chars - 1) / (2 frames) nats: with thousands of codes on a test set of
    thousands of frames even unrelated codes score a high PNMI, so read PNMI against its chance
    level (``pnmi - pnmi_chance``).
    """
    labels, codes = np.asarray(labels).ravel(), np.asarray(codes).ravel()
    result = _hubert_metrics(labels, codes)
    rng = np.random.default_rng(seed)
    chance = [_hubert_metrics(labels, rng.permutation(codes)) for _ in range(chance_shuffles)]
    result.update({
        "pnmi_chance": float(np.mean([c["pnmi"] for c in chance])) if chance else float("nan"),
        "char_purity_chance": float(np.mean([c["char_purity"] for c in chance])) if chance else float("nan"),
        "code_perplexity": float(np.exp(result["h_code"])),
        "frames": int(labels.size),
    })
    return result


# --------------------------------------------------------------------------- frame labels
def frame_labels_from_alignment(alignment: Sequence[int], blank: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per-frame token of a CTC alignment, blanks filled in: ``(labels (T,), was_blank (T,) bool)``.

    A blank frame takes the token of the nearest aligned (non-blank) frame *before* it, i.e.
    the character just spoken: CTC emits a character on a spike and blanks while it lasts. Blank
    frames before the first aligned token take that first token. Raises on an all-blank alignment.
    """
    alignment = np.asarray(alignment, dtype=np.int64).ravel()
    was_blank = alignment == blank
    aligned = np.flatnonzero(~was_blank)
    if aligned.size == 0:
        raise ValueError("the alignment has no non-blank frame (empty transcript?)")
    # index of the last aligned frame at or before each frame; the first one for leading blanks
    last = np.maximum.accumulate(np.where(was_blank, -1, np.arange(alignment.size)))
    last[last < 0] = aligned[0]
    return alignment[last], was_blank


def match_frames(labels: np.ndarray, codes: np.ndarray, what: str, tolerance: int = 1):
    """Trim two per-frame sequences to the shorter; they may differ by ``tolerance`` frames at most.

    Both models count 40 ms steps of the same audio, but a finetuned encoder can be configured
    to round its length differently by one frame; more than that means they are not aligned.
    """
    diff = abs(len(labels) - len(codes))
    if diff > tolerance:
        raise ValueError(f"{what}: the aligner has {len(labels)} frames and the pretrained model {len(codes)}; "
                         f"they must count the same 40 ms steps (differ by <= {tolerance})")
    n = min(len(labels), len(codes))
    return labels[:n], codes[:n], diff


def force_align(emissions: torch.Tensor, target: Sequence[int], blank: int) -> np.ndarray:
    """Viterbi CTC alignment (T,) of ``target`` token ids to log-probs ``emissions`` (T, V).

    torchaudio's ``forced_align``; raises ValueError when the transcript cannot fit
    (too many tokens, counting repeats, for the frames).
    """
    target = torch.as_tensor(list(target), dtype=torch.int32)
    repeats = int((target[1:] == target[:-1]).sum()) if len(target) > 1 else 0
    if len(target) + repeats > emissions.size(0):
        raise ValueError(f"{len(target)} tokens ({repeats} repeats) do not fit in {emissions.size(0)} frames")
    alignment, _ = AF.forced_align(emissions[None].float().cpu(), target[None], blank=blank)
    return alignment[0].numpy()


class SplitAlignment:
    """Character labels of every frame of a labelled split, from a finetuned CTC checkpoint.

    ``labels[id]``: (T,) dictionary indices per 40 ms frame (blanks filled in, see
    :func:`frame_labels_from_alignment`); ``task`` and ``dataset`` are the aligner's
    ``birq_finetuning`` task on ``data``, whose batches the probe feeds to the pretrained model too.
    """

    def __init__(self, aligner: str, data: str, subset: str, device: str = "cpu", batch_size: int = 8,
                 user_dir: Optional[str] = None):
        for needed in (f"{subset}.tsv", "dict.ltr.txt"):
            if not os.path.isfile(os.path.join(data, needed)):
                raise FileNotFoundError(f"{os.path.join(data, needed)} not found (--data {data} --subset {subset})")
        self.aligner, self.subset, self.device, self.batch_size = aligner, subset, torch.device(device), batch_size
        self.task, models, _, _ = load_finetuned(aligner, data, user_dir=user_dir, cpu=True)
        self.task.load_dataset(subset, task_cfg=self.task.cfg)
        self.dataset = self.task.dataset(subset)
        dictionary = self.task.target_dictionary
        self.dictionary, self.blank = dictionary, dictionary.bos()  # the blank of fairseq's ctc criterion
        model = models[0].to(self.device)
        strip = {dictionary.pad(), dictionary.eos(), self.blank}

        self.labels: Dict[int, np.ndarray] = {}
        self.skipped: Dict[int, str] = {}
        blank_frames = frames = 0
        with torch.no_grad():
            for sample in self.batches():
                emissions, lengths = compute_emissions([model], sample["net_input"])
                for i, sid in enumerate(sample["id"].tolist()):
                    target = [t for t in utils.strip_pad(sample["target"][i], dictionary.pad()).tolist()
                              if t not in strip]
                    try:
                        alignment = force_align(emissions[i, : int(lengths[i])], target, self.blank)
                        labels, was_blank = frame_labels_from_alignment(alignment, self.blank)
                    except ValueError as e:
                        self.skipped[sid] = f"{self.utterance_name(sid)}: {e}"
                        continue
                    self.labels[sid] = labels
                    blank_frames += int(was_blank.sum())
                    frames += len(labels)
        for reason in self.skipped.values():
            logger.warning(f"not aligned, left out: {reason}")
        if not self.labels:
            raise ValueError(f"no utterance of {subset} could be aligned with {aligner}")
        self.blank_fraction = blank_frames / frames

    def batches(self) -> Iterable[dict]:
        """The split's batches in manifest order, on the probe's device."""
        itr = self.task.get_batch_iterator(
            dataset=self.dataset, max_sentences=self.batch_size, ignore_invalid_inputs=False,
            required_batch_size_multiple=1, num_workers=0,
        ).next_epoch_itr(shuffle=False)
        for sample in itr:
            if sample and "net_input" in sample:
                yield utils.move_to_cuda(sample, self.device) if self.device.type == "cuda" else sample

    def utterance_name(self, sid: int) -> str:
        """``<subset> utterance <id> (<audio file>)`` for messages; fairseq stores the names compressed."""
        audio = getattr(self.dataset, "dataset", self.dataset)  # AddTargetDataset wraps FileAudioDataset
        try:
            name = audio.fnames[sid]
            name = audio.text_compressor.decompress(name if isinstance(audio.fnames, list) else name.as_py())
        except (AttributeError, IndexError, TypeError):
            return f"{self.subset} utterance {sid}"
        return f"{self.subset} utterance {sid} ({name})"

    def char(self, index: int) -> str:
        return self.dictionary[int(index)]


# --------------------------------------------------------------------------- codes
def check_pretrained_paths(paths: Sequence[str]) -> None:
    """Fail on a missing or wrong checkpoint before any work (reads configs only: tensors are mmapped)."""
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretraining checkpoint not found: {path}")
        require_birq_pretraining(path, torch_open(path))


def stream_names(model) -> List[str]:
    """``anchor`` (and ``enhanced``), one name per codebook: ``anchor.0``, ``anchor.1``, ... when several."""
    streams = [("anchor", model.cfg.anchor_num_codebooks)]
    if model.enhanced_quantizer is not None:
        streams.append(("enhanced", model.cfg.enhanced_num_codebooks))
    return [name if n == 1 else f"{name}.{i}" for name, n in streams for i in range(n)]


@torch.no_grad()
def frame_codes(model, source: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """The labels a BiRQ model trains on, on every frame, without masking or Gumbel noise.

    source (B, S) waveform, padding_mask (B, S) True at padding (or None) ->
    ``({stream name: (B, T') int64 codes}, (B,) valid frames)``. The model must be in eval mode.
    Mirrors ``BirqModel.forward`` (anchor: quantizer of the stacked normalised filterbank;
    enhanced: ``BirqModel.enhanced_code_logits`` of layers 1..k on the unmasked input);
    tests/test_probe.py checks it against ``forward``'s labels on the masked frames.
    """
    if model.anchor_quantizer is None:
        raise ValueError("the model's pretraining modules were removed: the probe needs its quantizers")
    feats, frame_lengths = model.frontend(source, padding_mask)
    batch, frames, n_mels = feats.shape
    steps = frames // FRAMES_PER_STEP
    lengths = frame_lengths // FRAMES_PER_STEP
    step_padding = torch.arange(steps, device=feats.device)[None, :] >= lengths[:, None]
    codes = [model.anchor_quantizer(feats.reshape(batch, steps, FRAMES_PER_STEP * n_mels))]  # (B, T', Na)
    if model.enhanced_quantizer is not None:
        h, _ = model.run_encoder(model.encoder_input(feats), step_padding, model.enhanced_layer - 1)
        logits = model.enhanced_code_logits(model.enhanced_features(h, step_padding))  # eval: no centre update
        if model.cfg.enhanced_sinkhorn_iters > 0:
            # training balances the batch's (masked) frames before the selection: balance these
            # utterances' unpadded frames the same way, so the codes are the ones trained on
            valid = ~step_padding
            frames = logits[valid]
            logits[valid] = frames + sinkhorn_offset(frames, model.cfg.enhanced_sinkhorn_iters)
        codes.append(logits.argmax(-1))  # (B, T', Ne)
    codes = torch.cat(codes, dim=-1)
    return dict(zip(stream_names(model), codes.unbind(-1))), lengths


# --------------------------------------------------------------------------- the probe
def probe_checkpoint(model, alignment: SplitAlignment) -> Dict:
    """Metrics per stream of ``model``'s codes against ``alignment``'s character labels."""
    model = model.to(alignment.device).eval()
    labels, codes = [], {name: [] for name in stream_names(model)}
    trimmed = 0
    for sample in alignment.batches():
        net_input = sample["net_input"]
        batch_codes, lengths = frame_codes(model, net_input["source"], net_input.get("padding_mask"))
        for i, sid in enumerate(sample["id"].tolist()):
            if sid not in alignment.labels:
                continue
            for name in codes:
                utt_labels, utt_codes, diff = match_frames(
                    alignment.labels[sid], batch_codes[name][i, : int(lengths[i])].cpu().numpy(),
                    alignment.utterance_name(sid))
                codes[name].append(utt_codes)
            labels.append(utt_labels)
            trimmed += diff
    labels = np.concatenate(labels)
    streams = {name: label_quality(labels, np.concatenate(c)) for name, c in codes.items()}
    return {"streams": streams, "frames": int(labels.size), "trimmed_frames": trimmed}


def probe(pretrained: str, alignment: SplitAlignment) -> Dict:
    """The probe of one pretraining checkpoint (see the module docstring); a JSON-able dict."""
    model, num_updates = load_pretrained_birq(pretrained)
    result = {"pretrained": pretrained, "num_updates": num_updates,
              "enhanced_layer": model.enhanced_layer if model.enhanced_quantizer is not None else None}
    result.update(probe_checkpoint(model, alignment))
    result.update({
        "aligner": alignment.aligner, "subset": alignment.subset, "utterances": len(alignment.labels),
        "blank_fraction": alignment.blank_fraction, "skipped": sorted(alignment.skipped.values()),
    })
    return result


def probe_over_training(pretrained: Sequence[str], aligner: str, data: str, subset: str, device: str = "cpu",
                        batch_size: int = 8) -> List[Dict]:
    """:func:`probe` of each pretraining checkpoint (aligning the split once), sorted by ``num_updates``.

    For "anchor and enhanced PNMI over training": pass e.g. the ``checkpoint_*_N.pt`` a run
    saved every quarter of training; each dict holds ``num_updates`` and ``streams``.
    """
    check_pretrained_paths(pretrained)
    alignment = SplitAlignment(aligner, data, subset, device=device, batch_size=batch_size)
    results = [probe(path, alignment) for path in pretrained]
    return sorted(results, key=lambda r: r["num_updates"])


# --------------------------------------------------------------------------- command line
def add_parser(sub) -> None:
    p = sub.add_parser("probe", help="PNMI / purity of a pretraining checkpoint's frame codes against "
                       "CTC-aligned characters (label-quality probe)")
    p.add_argument("--pretrained", required=True, nargs="+",
                   help="BiRQ/BEST-RQ pretraining checkpoint(s); several (e.g. checkpoint_*_N.pt) give one "
                   "result per checkpoint, ordered by update")
    p.add_argument("--aligner", required=True, help="finetuned CTC checkpoint (wav2vec_ctc on a BiRQ encoder, "
                   "e.g. the supervised topline) used to force-align the transcripts")
    p.add_argument("--data", required=True, help="directory with <subset>.tsv, <subset>.ltr and dict.ltr.txt")
    p.add_argument("--subset", default="test", help="split name (default: test)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per batch (default 8)")
    p.add_argument("--json", default=None, help="also write the results here (a list when several checkpoints)")


def format_result(result: Dict) -> str:
    rows = [f"{result['pretrained']} (update {result['num_updates']}): {result['subset']}, "
            f"{result['utterances']} utterances, {result['frames']} frames, "
            f"{100 * result['blank_fraction']:.1f}% CTC-blank frames"]
    for name, m in result["streams"].items():
        rows.append(f"  {name:<10} PNMI {m['pnmi']:.4f} (chance {m['pnmi_chance']:.4f})  "
                    f"char purity {m['char_purity']:.4f} (chance {m['char_purity_chance']:.4f})  "
                    f"cluster purity {m['cluster_purity']:.4f}  code perplexity {m['code_perplexity']:.1f} "
                    f"({m['codes_used']} codes used)")
    return "\n".join(rows)


def run(args) -> int:
    results = probe_over_training(args.pretrained, args.aligner, args.data, args.subset, args.device,
                                  args.batch_size)
    for result in results:
        print(format_result(result))
    if results[0]["skipped"]:
        print(f"left out (not alignable): {len(results[0]['skipped'])} utterances")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results if len(results) > 1 else results[0], f, indent=1)
        print(f"written: {args.json}")
    return 0
