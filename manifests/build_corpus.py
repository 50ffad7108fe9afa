#!/usr/bin/env python
"""Build the deterministic multi-speaker TTS demo corpus (fairseq wav2vec format).

Needs flite, festival (+ voices), espeak-ng, sox and the Debian text packages:
run scripts/install_tts.sh (as root) first. Same --seed => byte-identical
manifests and labels (and identical audio given the same engine versions).
A rerun reuses every valid wav already built. Examples:

    python manifests/build_corpus.py --out data/tts_corpus --size quick --seed 1
    python manifests/build_corpus.py --out data/tts_tiny --size tiny --jobs 2
    python manifests/build_corpus.py --out data/x --size default --train 500 --finetune 100

Presets (train/finetune/valid/test_seen/test_unseen utterances):
  tiny 4/3/2/2/2, quick 400/100/30/30/30, default 2000/300/60/100/100,
  large 8000/1000/200/300/300.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bootstrap  # noqa: E402

_bootstrap.bare_package()  # import birq_fairseq.data without importing fairseq

from tts_corpus import PRESETS, MissingDependencyError, build_corpus  # noqa: E402


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--size", choices=list(PRESETS), default="quick", help="preset (default: quick)")
    p.add_argument("--seed", type=int, default=1, help="seed for text, voices and perturbations (default 1)")
    for split in ("train", "finetune", "valid", "test-seen", "test-unseen"):
        p.add_argument(f"--{split}", type=int, default=None, metavar="N", help=f"{split} utterances (overrides preset)")
    p.add_argument("--max-words", type=int, default=None, help="longest sentence in words (4..25; preset default)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel synthesis jobs (default: cores)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    overrides = {"train": args.train, "finetune": args.finetune, "valid": args.valid,
                 "test_seen": args.test_seen, "test_unseen": args.test_unseen, "max_words": args.max_words}
    try:
        build_corpus(args.out, seed=args.seed, size=args.size, overrides=overrides, jobs=args.jobs,
                     progress=not args.no_progress)
    except MissingDependencyError as e:
        print(f"build_corpus: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"build_corpus: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
