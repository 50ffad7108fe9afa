from . import birq  # noqa: F401
