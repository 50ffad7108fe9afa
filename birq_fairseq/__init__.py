"""birq_fairseq: BiRQ / BEST-RQ self-supervised speech pretraining as a fairseq user module.

Importing the package (or pointing fairseq's ``common.user_dir`` / ``--user-dir`` at it)
registers the task ``birq_pretraining``, the model ``birq``, the criterion ``birq`` and
the task ``birq_finetuning`` (CTC decoding for fairseq-generate).
"""

__version__ = "0.1.0"

from . import criterions, models, tasks  # noqa: F401,E402
from .checkpoints import install as _install_checkpoint_errors  # noqa: E402

_install_checkpoint_errors()  # unreadable / non-fairseq checkpoints: errors that name the file (checkpoints.py)
