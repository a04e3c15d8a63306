#!/usr/bin/env bash
# The demo model on one GPU, end to end (training/configs/demo_synth_gpu.yaml):
# training (generates the scenes first; resumes a stopped run) -> presence calibration on val -> fp16 export.
# Everything lands in runs/demo_gpu. Then record the evaluation and ship (README "Demo model"):
#   python -m training.report_demo --checkpoint runs/demo_gpu/meres_demo.pt --synthetic-root runs/synth_test \
#       --heldout-root runs/heldout_scenes --out runs/demo_gpu/meres_demo_eval.json --num-workers 8
#   cp runs/demo_gpu/meres_demo.pt runs/demo_gpu/meres_demo_eval.json meres_core/weights/
#
#   scripts/train_demo_gpu.sh [--set KEY=VALUE ...]     # extra arguments go to training.train
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
config=training/configs/demo_synth_gpu.yaml
run=runs/demo_gpu
workers=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))

mkdir -p runs  # training.train generates the config's scenes first (one process per core)
# init_from: the shipped demo model (the config's init_from).
[[ -f runs/demo_shipped.pt ]] || cp meres_core/weights/meres_demo.pt runs/demo_shipped.pt
resume=(); [[ -f $run/latest.pt ]] && resume=(--resume)
$py -m training.train --config $config --set data.num_workers=$workers "${resume[@]}" "$@"

# Presence threshold: the val split's best balanced one, kept only if present targets stay found >= 95 %.
$py -m training.evaluate --checkpoint $run/best.pt --split val --limit 3000 --num-workers $workers \
  --out $run/eval/val >/dev/null
threshold=$($py -c "import json, sys; c = json.load(open(sys.argv[1]))['presence_calibration']
print(c['threshold'] if c['present_found'] >= 0.95 else '')" $run/eval/val/metrics.json)
$py -m training.export --checkpoint $run/best.pt --out $run/meres_demo.pt --half \
  ${threshold:+--presence-threshold $threshold}
