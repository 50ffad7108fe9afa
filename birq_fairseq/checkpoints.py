"""What kind of checkpoint is this? One-line errors for the wrong one, naming the file and the fix.

fairseq reads a checkpoint wherever it needs one (resume, ``model.w2v_path``,
``fairseq-generate --path``) with ``checkpoint_utils.load_checkpoint_to_cpu``, and
fails deep inside when given the wrong kind: a pretraining checkpoint to decoding
gives a bare ``AssertionError`` (``task_cfg.labels is not None``), a truncated
``checkpoint_last.pt`` gives torch's "failed finding central directory" with no file
named, a bare ``state_dict`` gives ``KeyError: 'best_loss'``.

This module holds every such check, and :func:`install` wraps fairseq's
``load_checkpoint_to_cpu`` once (when the plugin is imported) so that *reading*
failures name the file: a truncated or corrupt file, and a file that is not a
fairseq checkpoint. The wrapper only replaces the exception (the original is
chained as ``__cause__``); a readable checkpoint loads exactly as before.

Choice for a corrupt ``checkpoint_last.pt`` on resume: **fail**, naming the newest
intact ``checkpoint_*.pt`` beside it and the override that resumes from it
(``checkpoint.restore_file=...``). Falling back silently would restart from an older
update without the user deciding to lose the updates since then
(docs/troubleshooting.md).

Context-dependent checks (which kind is wanted where) are called by the tasks and,
through :mod:`birq_fairseq.loading`, the command-line tools: :func:`require_finetuned`
(decoding), :func:`require_pretrained` (``model.w2v_path``), :func:`require_birq` (tools
that need a BiRQ encoder), :func:`require_birq_pretraining` (the probe, which needs the
pretraining quantizers).
"""

import glob
import logging
import os
import zipfile
from typing import Optional, Tuple

import torch
from fairseq import checkpoint_utils

from birq_fairseq.safe_globals import allow_fairseq_checkpoint_globals

logger = logging.getLogger(__name__)

# model names (cfg.model._name) of fairseq's finetuned speech models
FINETUNED_MODELS = ("wav2vec_ctc", "wav2vec_seq2seq", "wav2vec2_seq2seq")
# pretraining models whose checkpoints wav2vec_ctc can finetune through model.w2v_path
ENCODER_MODELS = ("birq", "wav2vec2", "data2vec_audio")
PRETRAINING_TASKS = ("birq_pretraining", "audio_pretraining", "hubert_pretraining")
PRETRAINING_MODELS = ENCODER_MODELS + ("hubert",)

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
FINETUNE_HINT = ("fairseq-hydra-train --config-dir examples/finetune --config-name tiny_ctc "
                 f"common.user_dir={PLUGIN_DIR} task.data=DATA model.w2v_path={{path}} (README: Finetuning and WER)")


class CheckpointError(ValueError):
    """The wrong checkpoint, or an unreadable one; the message names the file and the fix."""


def _field(node, key: str) -> Optional[str]:
    if node is None:
        return None
    value = node.get(key, None) if hasattr(node, "get") else getattr(node, key, None)
    return None if value is None else str(value)


def describe(state: dict) -> Tuple[str, Optional[str], Optional[str]]:
    """``(kind, model name, task name)`` of a loaded checkpoint ``state``.

    kind is ``"finetuned"`` (a wav2vec_ctc-like model on a pretrained encoder),
    ``"pretraining"`` (birq, wav2vec2, data2vec_audio, hubert, or a pretraining task),
    ``"other"`` (any other fairseq model) or ``"not_fairseq"`` (no ``cfg``/``args``).
    """
    cfg = state.get("cfg") if isinstance(state, dict) else None
    if cfg is not None:
        model_cfg, task_cfg = cfg.get("model", None), cfg.get("task", None)
        model, task = _field(model_cfg, "_name"), _field(task_cfg, "_name")
        has_w2v = model_cfg is not None and (_field(model_cfg, "w2v_path") or _field(model_cfg, "w2v_args"))
    elif isinstance(state, dict) and state.get("args") is not None:  # pre-hydra fairseq checkpoints
        args = state["args"]
        model, task = getattr(args, "arch", None), getattr(args, "task", None)
        has_w2v = bool(getattr(args, "w2v_path", None) or getattr(args, "w2v_args", None))
    else:
        return "not_fairseq", None, None
    if model in FINETUNED_MODELS or has_w2v:
        return "finetuned", model, task
    if model in PRETRAINING_MODELS or task in PRETRAINING_TASKS:
        return "pretraining", model, task
    return "other", model, task


def not_fairseq_message(path: str) -> str:
    return (f"{path} is not a fairseq checkpoint (it has no 'cfg' or 'args' entry: a bare model state_dict?); "
            "pass a checkpoint written by fairseq-hydra-train (checkpoint_best.pt or checkpoint_last.pt)")


def require_finetuned(path: str, state: dict) -> None:
    """Decoding needs a finetuned CTC checkpoint; raise :class:`CheckpointError` otherwise."""
    kind, model, task = describe(state)
    if kind == "finetuned":
        return
    if kind == "pretraining":
        raise CheckpointError(f"{path} is a pretraining checkpoint (model '{model}', task '{task}'); "
                              f"finetune it first: " + FINETUNE_HINT.format(path=path))
    if kind == "not_fairseq":
        raise CheckpointError(not_fairseq_message(path))
    raise CheckpointError(f"{path} holds a '{model}' model (task '{task}'), not a finetuned CTC model; decode a "
                          "checkpoint finetuned with wav2vec_ctc (e.g. examples/finetune/tiny_ctc.yaml)")


def require_pretrained(path: str, state: dict) -> None:
    """``model.w2v_path`` needs a pretraining checkpoint of an encoder wav2vec_ctc can finetune."""
    kind, model, task = describe(state)
    if kind == "pretraining" and model in ENCODER_MODELS:
        return
    if kind == "finetuned":
        source = _field(state["cfg"].get("model", None), "w2v_path") if state.get("cfg") is not None else None
        origin = f" (it was finetuned from {source})" if source else ""
        raise CheckpointError(f"model.w2v_path={path} is a finetuned checkpoint (model '{model}'), not a pretraining "
                              f"one; set model.w2v_path to the pretraining checkpoint{origin}, or decode this one "
                              "with fairseq-generate / birq-fairseq-infer")
    if kind == "not_fairseq":
        raise CheckpointError("model.w2v_path=" + not_fairseq_message(path))
    raise CheckpointError(f"model.w2v_path={path} holds a '{model}' model (task '{task}'); wav2vec_ctc finetunes a "
                          f"pretraining checkpoint of {', '.join(ENCODER_MODELS)}: e.g. checkpoint_best.pt of "
                          "fairseq-hydra-train --config-dir examples/pretrain --config-name tiny_birq")


def require_birq(path: str, state: dict) -> None:
    """Tools that need a BiRQ encoder (pretraining checkpoint, or finetuned from one)."""
    kind, model, task = describe(state)
    if kind == "not_fairseq":
        raise CheckpointError(not_fairseq_message(path))
    if model == "birq":
        return
    if kind == "finetuned":
        w2v_args = state["cfg"]["model"].get("w2v_args", None) if state.get("cfg") is not None else None
        inner = _field(w2v_args.get("model", None), "_name") if w2v_args is not None else None
        if inner == "birq":
            return
        model = f"{model} on {inner or 'a non-BiRQ encoder'}"
    raise CheckpointError(f"{path} holds a '{model}' model (task '{task}'), not BiRQ; pass a checkpoint of "
                          "fairseq-hydra-train --config-dir examples/pretrain --config-name tiny_birq (or finetuned "
                          "from one)")


def require_birq_pretraining(path: str, state: dict) -> None:
    """The probe reads the pretraining quantizers: only a ``birq`` pretraining checkpoint has them."""
    cfg = state.get("cfg") if isinstance(state, dict) else None
    model_cfg = cfg.get("model", None) if cfg is not None else None
    name = model_cfg.get("_name", None) if model_cfg is not None else None
    if name != "birq":
        what = "a finetuned checkpoint" if name == "wav2vec_ctc" else f"model {name!r}"
        raise CheckpointError(f"{path} is {what}, not a BiRQ/BEST-RQ pretraining checkpoint (model 'birq'): the "
                              "probe reads the pretraining quantizers; pass checkpoint_*.pt of the pretraining run")


# --------------------------------------------------------------------------- reading
def torch_open(path: str):
    """``torch.load`` of ``path`` with safe loading; zip checkpoints are mmapped (the tensors are not read)."""
    allow_fairseq_checkpoint_globals()
    return torch.load(path, map_location="cpu", mmap=zipfile.is_zipfile(path))


def newest_intact_sibling(path: str) -> Optional[str]:
    """The ``checkpoint*.pt`` beside ``path`` (not ``path``) that opens and holds the most updates.

    Ranked by the update count stored in each file (then modification time), so epoch
    (``checkpoint3.pt``), update (``checkpoint_1_400.pt``) and best checkpoints compare fairly.
    """
    folder = os.path.dirname(os.path.abspath(path))
    best, best_key = None, None
    for cand in glob.glob(os.path.join(folder, "checkpoint*.pt")):
        if os.path.abspath(cand) == os.path.abspath(path):
            continue
        try:
            state = torch_open(cand)
        except Exception:
            continue
        history = (state.get("optimizer_history") if isinstance(state, dict) else None) or [{}]
        updates = history[-1].get("num_updates")
        key = (-1 if updates is None else int(updates), os.path.getmtime(cand))
        if best_key is None or key > best_key:
            best, best_key = cand, key
    return best


def corrupt_message(path: str, reason: str) -> str:
    good = newest_intact_sibling(path)
    if good:
        way_out = (f"the newest intact checkpoint beside it is {good}: resume from it with "
                   f"checkpoint.restore_file={good}")
    else:
        way_out = ("no intact checkpoint*.pt is beside it: copy it again, or move it away (a training run then "
                   "starts from scratch)")
    reason = " ".join(str(reason).split()).split(". ")[0][:160]  # torch's first sentence
    return f"{path} is truncated or corrupt ({reason}); {way_out}"


_LAST_READ = {"path": None, "state": None}


def last_read() -> Tuple[Optional[str], Optional[dict]]:
    """Path and config (``{"cfg": ..., "args": ...}``, no weights) of the checkpoint fairseq read last.

    fairseq's ``load_model_ensemble_and_task`` reads a checkpoint and then calls
    ``task.build_model(cfg.model, from_checkpoint=True)`` without the path; this lets
    the task name the file in its error.
    """
    return _LAST_READ["path"], _LAST_READ["state"]


def _wrap(load):
    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        try:
            state = load(path, arg_overrides, load_on_all_ranks)
            _LAST_READ.update(path=str(path), state={"cfg": state.get("cfg"), "args": state.get("args")})
            return state
        except CheckpointError:
            raise
        except Exception as e:
            # Only reading failures of an existing local file are translated; anything else is fairseq's.
            local = str(path)
            if not os.path.isfile(local):
                raise
            try:
                state = torch_open(local)
            except Exception as read_error:
                if "Unsupported global" in str(read_error) or "Weights only load failed" in str(read_error):
                    raise  # safe-loading refusal: not a corrupt file (docs/troubleshooting.md)
                raise CheckpointError(corrupt_message(local, read_error)) from e
            if describe(state)[0] == "not_fairseq":
                raise CheckpointError(not_fairseq_message(local)) from e
            raise

    load_checkpoint_to_cpu.__wrapped__ = load
    load_checkpoint_to_cpu.__doc__ = load.__doc__
    load_checkpoint_to_cpu._birq_wrapped = True
    return load_checkpoint_to_cpu


def install() -> None:
    """Idempotently wrap ``fairseq.checkpoint_utils.load_checkpoint_to_cpu`` (see the module docstring)."""
    if not getattr(checkpoint_utils.load_checkpoint_to_cpu, "_birq_wrapped", False):
        checkpoint_utils.load_checkpoint_to_cpu = _wrap(checkpoint_utils.load_checkpoint_to_cpu)
