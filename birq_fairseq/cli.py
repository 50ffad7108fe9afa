"""``birq-fairseq`` / ``python -m birq_fairseq``: the plugin's command-line tools.

    birq-fairseq wer            WER of a finetuned CTC checkpoint               (birq_fairseq/wer.py)
    birq-fairseq dump-features  layer features for HuBERT's simple_kmeans       (birq_fairseq/features.py)
    birq-fairseq export         the encoder for torch.export / TorchScript / ONNX (birq_fairseq/export.py)
    birq-fairseq probe          PNMI / purity of the pretraining codes          (birq_fairseq/probe.py)
    birq-fairseq superb         frozen SUPERB-style evaluation                  (birq_fairseq/superb.py)

Each command is a module with ``add_parser(subparsers)`` and ``run(args) -> exit status``; this
one only dispatches. A wrong input (a missing file, a checkpoint of the wrong kind, a bad
value: ``FileNotFoundError`` or ``ValueError``, which
:class:`~birq_fairseq.checkpoints.CheckpointError` is) ends the command with one line naming it
and exit status 1, no traceback.
"""

import argparse
import logging
import os
import sys
from typing import List, Optional

from birq_fairseq import export, features, probe, superb, wer

# subcommand -> its module, in the order `birq-fairseq --help` lists them
COMMANDS = {"wer": wer, "dump-features": features, "export": export, "probe": probe, "superb": superb}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birq-fairseq", description="BiRQ fairseq plugin tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=os.environ.get("LOGLEVEL", "WARNING").upper(), stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (FileNotFoundError, ValueError) as e:  # the user's input: one line naming it, no traceback
        print(f"birq-fairseq {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
