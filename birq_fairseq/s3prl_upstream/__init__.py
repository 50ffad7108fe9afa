"""A ``birq`` upstream for s3prl (SUPERB): :class:`UpstreamExpert` and the hub entries.

s3prl itself is not a dependency; see expert.py for the interface and hubconf.py for how to
register the entries with s3prl.
"""

from .expert import UpstreamExpert
from .hubconf import birq, birq_local

__all__ = ["UpstreamExpert", "birq", "birq_local"]
