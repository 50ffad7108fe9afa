from . import birq_criterion  # noqa: F401
