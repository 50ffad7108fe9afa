#!/bin/bash
# The finetuning-lr check of the ladder's large (8 x 256) size (ladder.FINETUNE_LR): CTC finetuning of
# its random init (seed 1) on the 300 labelled utterances, 2000 updates, the regime's FT_FAST recipe at
# each lr, valid CER every 500 updates (the last "valid_uer" of each train.log). Needs the rung's init:
#   .venv/bin/python examples/demo/ladder.py --runs large:none:0:1
# Measured 2026-12-05: valid CER 50.7 (5e-4) and 53.0 (2e-4) at 2000 updates; FT_FAST's own 2e-3
# stayed all blank (the rung's first finetuning, CER 100).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
for lr in 0.0005 0.0002; do
  out=$root/results_runs/large_ft_lr/lr$lr
  [ -f "$out/done" ] && continue
  mkdir -p "$out"
  OMP_NUM_THREADS=1 .venv/bin/fairseq-hydra-train --config-dir examples/finetune --config-name tiny_ctc \
    common.user_dir=$root/birq_fairseq task.data=$root/data/tts_default \
    model.w2v_path=$root/results_runs/ladder/large_none_init_seed1/pretrain/none/checkpoint_last.pt \
    checkpoint.save_dir=$out hydra.run.dir=$out/hydra common.log_format=json common.log_file=$out/train.log \
    common.log_interval=100 common.seed=1 dataset.train_subset=finetune300 dataset.valid_subset=valid \
    optimization.max_update=2000 dataset.max_tokens=128000 dataset.validate_interval_updates=500 \
    checkpoint.no_save=true common.cpu=true dataset.num_workers=0 "optimization.lr=[$lr]" optimization.clip_norm=10.0 \
    > "$out/stdout.log" 2>&1
  touch "$out/done"
  echo "lr $lr: last valid CER $(grep -o '"valid_uer": "[0-9.]*"' "$out/train.log" | tail -n1)"
done
