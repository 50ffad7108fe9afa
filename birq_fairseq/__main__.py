"""``python -m birq_fairseq COMMAND ...``: the ``birq-fairseq`` command line (see ``birq_fairseq/cli.py``)."""

import sys

from birq_fairseq.cli import main

if __name__ == "__main__":
    sys.exit(main())
