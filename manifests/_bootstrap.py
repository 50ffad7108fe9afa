"""Make ``birq_fairseq.data`` importable from a checkout without importing fairseq.

``birq_fairseq/__init__.py`` imports the fairseq task/model/criterion modules
(several seconds, and fairseq must be installed). The data tools need none of
that, so the command line scripts here register a bare ``birq_fairseq``
package pointing at the checkout before importing ``birq_fairseq.data.*``.
Only for these standalone scripts: never call this inside a process that also
uses the real plugin.
"""
import os
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bare_package():
    """Register ``birq_fairseq`` as a bare package (its __init__ is not run)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    if "birq_fairseq" not in sys.modules:
        pkg = types.ModuleType("birq_fairseq")
        pkg.__path__ = [os.path.join(REPO, "birq_fairseq")]
        sys.modules["birq_fairseq"] = pkg
