"""birq_fairseq: BiRQ / BEST-RQ self-supervised speech pretraining as a fairseq user module.

Importing the package (or pointing fairseq's ``common.user_dir`` / ``--user-dir`` at it)
registers the task ``birq_pretraining``, the model ``birq``, the criterion ``birq`` and
the task ``birq_finetuning`` (CTC decoding for fairseq-generate).
"""

__version__ = "0.1.0"

import warnings  # noqa: E402

with warnings.catch_warnings():
    # Importing fairseq compiles a few of its helpers with torch.jit.script (fairseq/models/model_utils.py),
    # which torch 2.14 deprecates with a FutureWarning, printed by every command that imports the plugin
    # first. It is about fairseq's source, which neither users nor the plugin change (the plugin's export
    # uses torch.export): silenced, that message only, while fairseq is imported here.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import fairseq  # noqa: F401,E402

from . import criterions, models, tasks  # noqa: F401,E402
from .checkpoints import install as _install_checkpoint_errors  # noqa: E402

_install_checkpoint_errors()  # unreadable / non-fairseq checkpoints: errors that name the file (checkpoints.py)
