"""``birq_finetuning``: fairseq's ``audio_finetuning`` plus CTC decoding and label checks.

A drop-in replacement: every wav2vec 2.0 finetuning config works with
``task._name=birq_finetuning`` (the config dataclass extends
``AudioFinetuningConfig``), and checkpoints finetuned with the stock
``audio_finetuning`` task can be decoded with ``--task birq_finetuning``.

Additions:

* ``build_generator`` returns a CTC decoder (``birq_fairseq.decoding``) so that
  ``fairseq-generate --task birq_finetuning --scoring wer --post-process letter``
  works for ``wav2vec_ctc`` models (the stock audio tasks build a seq2seq
  ``SequenceGenerator`` that a CTC model cannot use). Options (task fields, so
  both command-line flags and YAML keys):

  ``--ctc-decoder greedy|lexicon`` (default greedy), ``--lexicon FILE``,
  ``--kenlm-model FILE``, ``--word-score``, ``--unk-score``, ``--sil-score``,
  ``--beam-threshold``, ``--beam-size-token``; the beam size and LM weight are
  fairseq's own generation flags ``--beam`` and ``--lm-weight`` (``--nbest`` too).
  Seq2seq models (``task.autoregressive=true``) keep the stock generator.

* Label validation when a split is loaded: the label file must have one
  non-empty line per manifest entry and use only dictionary symbols;
  otherwise a ``ValueError("<label file>:<line>: ...")`` is raised (stock
  fairseq silently maps unknown symbols to ``<unk>`` and reports only a count
  mismatch). Disable with ``task.validate_labels=false``.
"""

# NOTE: no `from __future__ import annotations` here: fairseq reads dataclass field
# types at runtime (string annotations fail with "field should be a type").

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from omegaconf import OmegaConf

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig, AudioFinetuningTask

from birq_fairseq import checkpoints
from birq_fairseq.data.labels import check_label_file
from birq_fairseq.decoding import build_ctc_decoder
from birq_fairseq.safe_globals import allow_fairseq_checkpoint_globals

logger = logging.getLogger(__name__)

# Finetuned checkpoints pickle a fairseq Dictionary; torch>=2.6 refuses it by default.
allow_fairseq_checkpoint_globals()

CTC_DECODER_CHOICES = ChoiceEnum(["greedy", "lexicon"])


@dataclass
class BirqFinetuningConfig(AudioFinetuningConfig):
    # audio_finetuning defaults to labels=None, so `fairseq-generate` without
    # `--labels ltr` builds no target dictionary and crashes on `tgt_dict.pad()`.
    labels: Optional[str] = field(
        default="ltr",
        metadata={"help": "extension of the label files (and of dict.<labels>.txt)"},
    )
    keep_partial_batches: bool = field(
        default=True,
        metadata={"help": "use required_batch_size_multiple=1: fairseq's batch_by_size drops the "
                  "last batch when its size is not a multiple of it (default 8 in fairseq-generate), "
                  "silently leaving utterances out of decoding/validation WER"},
    )
    validate_labels: bool = field(
        default=True,
        metadata={"help": "check label files against manifest and dictionary when loading a split"},
    )
    ctc_decoder: CTC_DECODER_CHOICES = field(
        default="greedy",
        metadata={"help": "CTC decoder built for fairseq-generate: greedy (best path) or lexicon "
                  "(flashlight beam search constrained to --lexicon words, optional --kenlm-model); "
                  "beam size is --beam, LM weight --lm-weight"},
    )
    lexicon: Optional[str] = field(
        default=None,
        metadata={"help": "lexicon for --ctc-decoder lexicon: 'WORD<TAB>W O R D |' per line"},
    )
    kenlm_model: Optional[str] = field(
        default=None, metadata={"help": "KenLM model (.arpa or .bin) for --ctc-decoder lexicon"}
    )
    word_score: float = field(default=0.0, metadata={"help": "word insertion score (lexicon decoder)"})
    unk_score: float = field(
        default=float("-inf"), metadata={"help": "unknown word insertion score (lexicon decoder)"}
    )
    sil_score: float = field(default=0.0, metadata={"help": "silence insertion score (lexicon decoder)"})
    beam_threshold: float = field(default=25.0, metadata={"help": "beam pruning threshold (lexicon decoder)"})
    beam_size_token: Optional[int] = field(
        default=None, metadata={"help": "tokens considered per step (lexicon decoder; default all)"}
    )


def validate_labels(manifest_path: str, label_path: str, dictionary) -> int:
    """Check ``label_path`` against ``manifest_path`` and a fairseq ``Dictionary``.

    Letter (``.ltr``) files are checked by ``birq_fairseq.data.labels.check_label_file``
    (count, empty lines, single-symbol tokens ending in ``|``, symbols in the
    dictionary); for other label types tokens are the whitespace-separated units
    fairseq's ``LabelEncoder`` looks up, and each must be in the dictionary.
    """
    symbols = set(dictionary.symbols) if dictionary is not None else None
    if label_path.endswith(".ltr") or symbols is None:
        return check_label_file(manifest_path, label_path, symbols)
    n = check_label_file(manifest_path, label_path, None)
    with open(label_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            bad = next((t for t in line.split() if t not in symbols), None)
            if bad is not None:
                raise ValueError(f"{label_path}:{lineno}: symbol {bad!r} is not in the dictionary")
    return n


def finetuning_task_config(task_cfg, saved_task_cfg=None, **overrides):
    """A ``birq_finetuning`` config made from another audio-finetuning task config.

    ``task_cfg`` is e.g. a command line's ``task=audio_finetuning task.data=...`` or a
    checkpoint's saved task; keys ``birq_finetuning`` does not know are dropped,
    ``labels`` left unset are taken from ``saved_task_cfg`` (the checkpoint's), then
    ``overrides`` apply. Used by the decoding tools (``python -m birq_fairseq wer``,
    ``birq-fairseq-infer``) so that they get this task's label checks, partial batches
    and errors whatever task the model was finetuned with.
    """

    def container(c):
        if c is None:
            return {}
        return OmegaConf.to_container(c, resolve=True) if OmegaConf.is_config(c) else dict(c)

    known = set(BirqFinetuningConfig.__dataclass_fields__)
    out = {k: v for k, v in container(task_cfg).items() if k in known}
    if out.get("labels") is None:
        out["labels"] = container(saved_task_cfg).get("labels") or "ltr"
    out.update(overrides)
    out["_name"] = "birq_finetuning"
    return OmegaConf.create(out)


@register_task("birq_finetuning", dataclass=BirqFinetuningConfig)
class BirqFinetuningTask(AudioFinetuningTask):
    cfg: BirqFinetuningConfig

    def load_target_dictionary(self):
        if self.cfg.labels:
            folder = self.cfg.target_dictionary or self.cfg.data
            dict_path = os.path.join(folder, f"dict.{self.cfg.labels}.txt")
            if not os.path.isfile(dict_path):
                raise FileNotFoundError(
                    f"{dict_path} not found: the dictionary of task.labels={self.cfg.labels}, which indexes the CTC "
                    f"output layer; copy the dict.{self.cfg.labels}.txt the model was finetuned with into {folder}, "
                    "or point task.target_dictionary (fairseq-generate: --target-dictionary) at its folder; "
                    "birq-fairseq-infer and `python -m birq_fairseq wer` use the copy inside the finetuned checkpoint"
                )
        return super().load_target_dictionary()

    def build_model(self, model_cfg, from_checkpoint=False):
        """Check the checkpoint's kind first: a pretraining one given to decoding, or a finetuned / foreign one
        given as ``model.w2v_path``, stops with one line naming the file and the fix (birq_fairseq/checkpoints.py)."""
        if from_checkpoint:  # decoding (fairseq-generate --path, load_model_ensemble): a finetuned model is needed
            path, state = checkpoints.last_read()
            if state is None or checkpoints.describe(state)[1] != getattr(model_cfg, "_name", None):
                state = {"cfg": {"model": model_cfg}}
            checkpoints.require_finetuned(path or "the checkpoint", state)
        else:
            w2v_path = getattr(model_cfg, "w2v_path", None)
            if w2v_path and getattr(model_cfg, "w2v_args", None) is None and os.path.isfile(w2v_path):
                try:
                    state = checkpoints.torch_open(w2v_path)
                except Exception:  # unreadable: fairseq's load_checkpoint_to_cpu says why, naming the file
                    state = None
                if state is not None:
                    checkpoints.require_pretrained(w2v_path, state)
        return super().build_model(model_cfg, from_checkpoint)

    def load_dataset(self, split: str, task_cfg=None, **kwargs):
        task_cfg = task_cfg or self.cfg
        labels = getattr(task_cfg, "labels", None)
        if (
            getattr(self.cfg, "validate_labels", True)
            and labels
            and getattr(task_cfg, "multi_corpus_keys", None) is None
            and not getattr(task_cfg, "binarized_dataset", False)
        ):
            manifest = os.path.join(self.cfg.data, f"{split}.tsv")
            label_path = os.path.join(self.cfg.data, f"{split}.{labels}")
            if not os.path.exists(label_path):
                raise FileNotFoundError(f"{label_path}: label file for split {split!r} not found")
            validate_labels(manifest, label_path, self.target_dictionary)
        return super().load_dataset(split, task_cfg, **kwargs)

    def get_batch_iterator(
        self,
        dataset,
        max_tokens=None,
        max_sentences=None,
        max_positions=None,
        ignore_invalid_inputs=False,
        required_batch_size_multiple=1,
        **kwargs,
    ):
        if getattr(self.cfg, "keep_partial_batches", True) and required_batch_size_multiple > 1:
            logger.info(
                f"required_batch_size_multiple={required_batch_size_multiple} -> 1 (keep_partial_batches=true; "
                "fairseq would otherwise drop the last incomplete batch)"
            )
            required_batch_size_multiple = 1
        # fairseq-generate defaults to max_tokens=12000 (a text default; 0.75 s of
        # 16 kHz audio) and then asserts "Sentences lengths should not exceed max_tokens".
        sizes = getattr(dataset, "sizes", None)
        if max_tokens and max_sentences is None and sizes is not None and len(sizes):
            longest = int(np.max(sizes))
            if longest > max_tokens:
                logger.warning(
                    f"max_tokens={max_tokens} is shorter than the longest utterance ({longest} samples): "
                    f"using max_tokens={longest} (set --max-tokens or --batch-size explicitly)"
                )
                max_tokens = longest
        return super().get_batch_iterator(
            dataset,
            max_tokens=max_tokens,
            max_sentences=max_sentences,
            max_positions=max_positions,
            ignore_invalid_inputs=ignore_invalid_inputs,
            required_batch_size_multiple=required_batch_size_multiple,
            **kwargs,
        )

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        if getattr(self.cfg, "autoregressive", False):
            return super().build_generator(
                models, args, seq_gen_cls=seq_gen_cls, extra_gen_cls_kwargs=extra_gen_cls_kwargs, **kwargs
            )
        extra = extra_gen_cls_kwargs or {}
        lm_weight = getattr(args, "lm_weight", None)
        if lm_weight is None:
            lm_weight = extra.get("lm_weight", 0.0)
        if self.cfg.kenlm_model and not lm_weight:
            logger.warning("--kenlm-model is set but --lm-weight is 0 (fairseq-generate's default): the LM is ignored")
        decoder = build_ctc_decoder(
            self.target_dictionary,
            decoder=str(self.cfg.ctc_decoder),
            lexicon=self.cfg.lexicon,
            kenlm_model=self.cfg.kenlm_model,
            beam=int(getattr(args, "beam", 5) or 5),
            nbest=int(getattr(args, "nbest", 1) or 1),
            beam_size_token=self.cfg.beam_size_token,
            beam_threshold=self.cfg.beam_threshold,
            lm_weight=float(lm_weight or 0.0),
            word_score=self.cfg.word_score,
            unk_score=self.cfg.unk_score,
            sil_score=self.cfg.sil_score,
        )
        logger.info(f"CTC decoder: {type(decoder).__name__}")
        return decoder
