"""s3prl's ``run_downstream.py`` with the ``birq`` upstream registered.

    cd s3prl/s3prl   # s3prl's configs are relative paths: run where run_downstream.py lives
    python -m birq_fairseq.s3prl_upstream.run_downstream -m train -n birq_pr \\
        -u birq -k /path/to/checkpoint_best.pt -d ctc -c downstream/ctc/libriphone.yaml

Every argument goes to s3prl unchanged; this only adds ``birq`` and ``birq_local`` to
``s3prl.hub`` first (see hubconf.py). s3prl must be installed in the environment, in a version
whose torchaudio calls work there: s3prl 0.4.18 calls ``torchaudio.set_audio_backend`` and
imports ``torchaudio.sox_effects``, which torchaudio 2.11 (this project's pin) removed.
"""

import sys
from typing import List, Optional


def register(hub) -> None:
    """Add the ``birq`` entries to s3prl's hub module (what ``-u NAME`` is looked up in)."""
    from birq_fairseq.s3prl_upstream.hubconf import birq, birq_local

    hub.birq = birq
    hub.birq_local = birq_local


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        import s3prl.hub
        from s3prl import run_downstream
    except Exception as e:  # ImportError, or s3prl's own imports of removed torchaudio APIs
        print(f"birq_fairseq.s3prl_upstream.run_downstream: error: cannot import s3prl ({type(e).__name__}: {e}); "
              "install s3prl in an environment whose torchaudio it supports", file=sys.stderr)
        return 1
    register(s3prl.hub)
    sys.argv = [run_downstream.__file__] + argv  # s3prl parses sys.argv itself
    run_downstream.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
