#!/usr/bin/env python
"""Where a fairseq training update of the tiny model goes (issue #17, item 1).

    OMP_NUM_THREADS=1 .venv/bin/python examples/benchmarks/profile_step.py --data DIR [--updates 30]

Builds fairseq's own Trainer in this process from examples/pretrain/tiny_birq.yaml (the
demo's batching: dataset.max_tokens=128000, i.e. 8 s per batch), runs ``--warmup`` updates,
then ``--updates`` updates under cProfile (Python side: inclusive time of the functions that
own each piece of the step) and a few under torch.profiler (operator side), for BEST-RQ and
BiRQ. The data iterator runs in the training thread (``dataset.data_buffer_size=0``) so that
reading and collating audio is counted: with the default background thread it competes for
the same core anyway.
"""

import argparse
import cProfile
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import torch  # noqa: E402

from fairseq_update import batches, build_trainer  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--systems", default="bestrq,birq")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--torch-profile", type=int, default=5, help="updates under torch.profiler")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import birq_fairseq

    print(f"birq_fairseq from {birq_fairseq.__file__}; load {os.getloadavg()}")
    for system in args.systems.split(","):
        over = [f"model.enhanced_stream={'true' if system == 'birq' else 'false'}", *args.overrides]
        cfg, trainer, epoch_itr = build_trainer(args.data, over)
        stream = batches(trainer, epoch_itr)
        for _ in range(args.warmup):
            trainer.train_step(next(stream))
        seconds = []
        prof = cProfile.Profile()
        audio = 0.0

        def update():
            nonlocal audio
            start = time.perf_counter()
            samples = next(stream)
            out = trainer.train_step(samples)
            seconds.append(time.perf_counter() - start)
            return out

        prof.enable()
        for _ in range(args.updates):
            update()
        prof.disable()
        stats = pstats.Stats(prof)
        print(f"\n=== {system}: {args.updates} updates, median {sorted(seconds)[len(seconds) // 2]:.4f} s/update, "
              f"load {os.getloadavg()}")
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
        if args.torch_profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as tp:
                for _ in range(args.torch_profile):
                    update()
            print(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
