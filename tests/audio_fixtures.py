"""Small synthetic audio corpora written as fairseq manifests: manifests/synthetic_corpus.py,
shared with the benchmarks and the GPU check (examples/benchmarks), re-exported for the tests."""

import os
import sys

MANIFESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "manifests")
if MANIFESTS not in sys.path:
    sys.path.append(MANIFESTS)  # appended: the data scripts there shadow nothing the tests import

from synthetic_corpus import synth_utterance, write_manifest  # noqa: E402,F401

__all__ = ["synth_utterance", "write_manifest"]
