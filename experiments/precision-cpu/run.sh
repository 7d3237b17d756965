#!/usr/bin/env bash
# fp32 against bf16 on a CPU: ResNet-20 and ResNet-56, seeds 0 and 1, 1,500 iterations each (lr 0.1, the paper's
# optimiser and augmentation), on the JPEG copy of CIFAR-10, every record on the 10,000 test images; then the
# paired comparison (compare.py). About 85 minutes on 2 cores that compute bf16 natively (ResNet-56: 61), with nothing
# else running.
#   bash experiments/precision-cpu/run.sh [RESULTS_ROOT]        (DEPTHS=20 for ResNet-20 only)
set -euo pipefail
ROOT=${1:-runs-precision}
DEPTHS=${DEPTHS:-20 56}  # DEPTHS=20 made the runs recorded in README.md
for depth in $DEPTHS; do
  resdepth sweep experiment=demo model.depth=$depth model.block=residual seed=0,1 \
    trainer.precision=32-true,bf16-mixed trainer.max_steps=1500 trainer.eval_every=250 data.test_subset=0 \
    experiment_name=precision results_root="$ROOT"
done
python "$(dirname "$0")/compare.py" "$ROOT"
