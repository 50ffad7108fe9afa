"""Allow-list the fairseq classes that finetuned checkpoints pickle.

PyTorch >= 2.6 loads checkpoints with ``weights_only=True``. Pretraining
checkpoints load, but a *finetuned* (``wav2vec_ctc``) checkpoint stores the
target ``fairseq.data.dictionary.Dictionary`` (in the ``w2v_args``/task state)
and is refused with "Unsupported global: fairseq.data.dictionary.Dictionary" by
``fairseq-generate``, by resuming training and by ``checkpoint_utils``.

Found empirically (load a finetuned checkpoint, read the error, allow, repeat):
that class is the only one needed. We allow exactly it rather than turning safe
loading off.
"""

import torch
from fairseq.data.dictionary import Dictionary

_DONE = False


def fairseq_checkpoint_globals():
    """The classes a fairseq finetuned checkpoint needs (currently only ``Dictionary``)."""
    return [Dictionary]


def allow_fairseq_checkpoint_globals() -> None:
    """Idempotently register :func:`fairseq_checkpoint_globals` with ``torch.serialization``."""
    global _DONE
    if _DONE:
        return
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads with weights_only=False)
        add(fairseq_checkpoint_globals())
    _DONE = True
