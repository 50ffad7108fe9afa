"""Models from checkpoints: the one place the plugin's tools build a model from a file.

Every loader reads the file with fairseq's ``checkpoint_utils.load_checkpoint_to_cpu`` (which
:mod:`birq_fairseq.checkpoints` wraps, so an unreadable file is named), checks that it is the
kind of checkpoint the tool needs (a :class:`~birq_fairseq.checkpoints.CheckpointError` naming
the file and the fix otherwise), and builds the model in eval mode:

- :func:`load_finetuned`: a finetuned CTC checkpoint and its ``birq_finetuning`` task on a data
  directory (``birq-fairseq wer``, the probe's aligner). ``birq-fairseq-infer`` takes its two
  steps, :func:`finetuning_task` and :func:`load_finetuned_models`, with infer.py's options.
- :func:`load_birq_encoder`: the BiRQ encoder of a pretraining or a finetuned checkpoint, with
  no data directory (``dump-features``, ``export``, the SUPERB upstream).
- :func:`load_pretrained_birq`: a BiRQ pretraining checkpoint with its quantizers (``probe``).

The tasks and the model are registered with fairseq by importing :mod:`birq_fairseq`, which
importing this module does first.
"""

import argparse
import contextlib
import os
import warnings
from typing import Callable, Optional, Sequence, Tuple

import torch
from fairseq import checkpoint_utils, models, tasks, utils
from omegaconf import open_dict

from birq_fairseq.checkpoints import require_birq, require_birq_pretraining, require_finetuned
from birq_fairseq.safe_globals import allow_fairseq_checkpoint_globals
from birq_fairseq.tasks.birq_finetuning import finetuning_task_config

# fairseq's wav2vec_ctc keeps the pretrained encoder here (fairseq/models/wav2vec/wav2vec2_asr.py).
FINETUNED_ENCODER_PREFIX = "w2v_encoder.w2v_model."


@contextlib.contextmanager
def fairseq_model_building():
    """Build fairseq models without torch's deprecation of ``torch.nn.utils.weight_norm``.

    fairseq's wav2vec 2.0 encoder (and so BiRQ's) applies it to its positional convolution,
    which prints a FutureWarning each time a model is built: it is about fairseq's source, which
    neither the user nor this plugin can change. Only that message is silenced, only here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.nn\.utils\.weight_norm` is deprecated",
                                category=FutureWarning)
        yield


def read_checkpoint(path: str, require: Optional[Callable[[str, dict], None]] = None) -> dict:
    """The state of checkpoint ``path`` (weights on the CPU), once ``require(path, state)`` accepted it.

    ``require`` is one of :mod:`birq_fairseq.checkpoints`' checks (``require_finetuned``, ...).
    """
    allow_fairseq_checkpoint_globals()  # finetuned checkpoints pickle a fairseq Dictionary
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    if require is not None:
        require(path, state)
    return state


# --------------------------------------------------------------------------- finetuned CTC models
def finetuning_task(task_cfg, saved_task_cfg=None, **overrides):
    """The ``birq_finetuning`` task of ``task_cfg`` (keys it does not know dropped; ``labels``
    from ``saved_task_cfg`` when unset; then ``overrides``): see ``finetuning_task_config``."""
    return tasks.setup_task(finetuning_task_config(task_cfg, saved_task_cfg, **overrides))


def load_finetuned_models(paths: Sequence[str], task, arg_overrides: Optional[dict] = None,
                          state: Optional[dict] = None, **kwargs):
    """fairseq's ``load_model_ensemble`` of finetuned checkpoints on ``task``: ``(models in eval mode,
    model config)``. ``state``: the already-read state of a single path; ``kwargs``: fairseq's
    ``suffix``, ``strict``, ``num_shards``."""
    with fairseq_model_building():
        ensemble, model_cfg = checkpoint_utils.load_model_ensemble(
            list(paths), arg_overrides=arg_overrides, task=task, state=state, **kwargs)
    return [m.eval() for m in ensemble], model_cfg


def load_finetuned(path: str, data: str, labels: Optional[str] = None, user_dir: Optional[str] = None,
                   cpu: bool = True):
    """A finetuned CTC checkpoint on the labelled data directory ``data``.

    Returns ``(task, models, model_cfg, use_cuda)``: the ``birq_finetuning`` task built from the
    checkpoint's task config with ``data`` (and ``labels``, default the checkpoint's), fairseq's
    ensemble of the one model in eval mode (on the GPU when ``cpu`` is False and CUDA is there).
    ``user_dir``: a fairseq user module to import first (one that registers other models).
    """
    if user_dir:
        utils.import_user_module(argparse.Namespace(user_dir=user_dir))
    state = read_checkpoint(path, require_finetuned)
    overrides = {"data": os.path.abspath(data)}
    if labels:
        overrides["labels"] = labels
    task = finetuning_task(state["cfg"].task, **overrides)
    ensemble, model_cfg = load_finetuned_models([path], task, arg_overrides={"data": overrides["data"]}, state=state)
    use_cuda = not cpu and torch.cuda.is_available()
    if use_cuda:
        ensemble = [m.cuda() for m in ensemble]
    return task, ensemble, model_cfg, use_cuda


# --------------------------------------------------------------------------- BiRQ encoders
def build_birq(model_cfg, weights: dict, pretraining_modules: bool = True):
    """The ``birq`` model of ``model_cfg`` holding ``weights`` (every one of them: strict loading).

    ``pretraining_modules=False``: the quantizers and heads are removed before loading, for the
    weights of an encoder without them (a finetuned checkpoint's).
    """
    if "enhanced_selection" not in model_cfg:
        # Written before the field existed: its labels were Gumbel samples (the literal method); the
        # default is now the argmax of balanced logits, which would change what the probe measures.
        with open_dict(model_cfg):
            model_cfg.enhanced_selection = "gumbel"
    with fairseq_model_building():
        model = models.build_model(model_cfg, task=None, from_checkpoint=True)
    if not pretraining_modules:
        model.remove_pretraining_modules()
    model.load_state_dict(weights, strict=True)
    return model


def load_birq_encoder(path: str):
    """The BiRQ encoder of a pretraining or a finetuned (``wav2vec_ctc``) checkpoint.

    Returns ``(model, task_cfg)``: the :class:`BirqModel` in eval mode on the CPU, its
    pretraining modules removed (as ``wav2vec_ctc`` does), and the task config it was
    trained with (``sample_rate``, ``normalize``). Needs no data directory or dictionary.
    """
    state = read_checkpoint(path, require_birq)
    cfg = state["cfg"]
    if cfg.model._name == "birq":
        model = build_birq(cfg.model, state["model"])
    else:  # finetuned: the encoder's own config is stored in w2v_args, its weights under the prefix
        weights = {k[len(FINETUNED_ENCODER_PREFIX):]: v for k, v in state["model"].items()
                   if k.startswith(FINETUNED_ENCODER_PREFIX)}
        model = build_birq(cfg.model.w2v_args.model, weights, pretraining_modules=False)
    model.remove_pretraining_modules()
    return model.eval(), cfg.task


def load_pretrained_birq(path: str) -> Tuple[torch.nn.Module, int]:
    """A ``birq`` pretraining checkpoint with its quantizers: ``(model in eval mode, num_updates)``.

    ``num_updates`` (from the optimizer history) is set on the model, so that schedules that
    depend on it (the Gumbel temperature) are where training left them.
    """
    state = read_checkpoint(path, require_birq_pretraining)
    model = build_birq(state["cfg"].model, state["model"])
    history = state.get("optimizer_history") or [{}]
    num_updates = int(history[-1].get("num_updates", getattr(model, "num_updates", 0)))
    model.set_num_updates(num_updates)
    return model.eval(), num_updates

