from . import birq_pretraining  # noqa: F401
from . import birq_finetuning  # noqa: F401
