#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one command; its outputs go into the folder DEST:
#   machine.txt    the GPU, driver, CPU, Python, torch, Lightning, Hydra and resdepth versions
#   tests.log      the CUDA tests: the CUDA-graph step against eager training (step by step and end to end) and
#                  the augmentation on the GPU (they skip on a machine without one)
#   bench.json     a short resdepth bench: ms per step of our path for ResNet-20/56/110 with the paper's BN over
#                  64 images, and the projected paper sweep; bench.log what it printed
#   paper/         the paper's full schedule (experiment=paper: 10 nets x 64,000 iterations), advanced within
#                  BUDGET (default 8m) and resumed there by the next call: ResNet and plain at depths 20 and 56
#                  first, then 32 and 44, then 110; sweep.log. Then `resdepth results` (what is done, what is
#                  left) and paper/figures/ (Figure 6, Figure 7, error vs depth, Table 6, report.md).
#                  On a GPU a sweep packs each depth's runs into one wide net (trainer.pack=auto).
#   packs*.json    resdepth bench --pack 1,2,4,6,8: K runs as one wide net against one alone, ResNet-20/56/110 with
#                  BN over 64 images, ResNet-56 with BN over the whole batch, and ResNet-56 with torch.compile
#                  inside the pack's graph (its warm-up time includes the compilation), and the paper's sweep
#                  projected with each depth's 2 (one seed) or 6 (three seeds) runs as one pack; packs.log
#   streams/       the paper's 10 nets for 1,000 iterations each, one pack per depth, with the 5 packs one after
#                  another (trainer.streams=1) and side by side on CUDA streams (trainer.streams=5); streams.log
#                  ends with the wall time of each
# Usage: BUDGET=8m scripts/gpu-check.sh DEST [RESDEPTH_OVERRIDES ...]
#        (make gpu-check DEST=folder [BUDGET=8m] picks the dataset)
# Each step goes on when an earlier one fails; the exit status is 1 if any failed (a spent budget is no failure).
set -u -o pipefail
DEST=${1:?usage: scripts/gpu-check.sh DEST [overrides...]}; shift
OVERRIDES=("$@")  # for the sweep: the dataset (make gpu-check picks it) and anything else
PY=${PY:-python3}
BUDGET=${BUDGET:-8m}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
mkdir -p "$DEST" || exit 1
if ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu-check: torch sees no CUDA GPU here (torch.cuda.is_available() is False); nothing was run" >&2
  exit 1
fi
BENCH_DATA=synthetic  # bench takes a dataset by name: a JPEG copy at another path is not found by name
for o in "${OVERRIDES[@]}"; do case $o in data=*) BENCH_DATA=${o#data=};; esac; done
for o in "${OVERRIDES[@]}"; do case $o in data.path=*) BENCH_DATA=synthetic;; esac; done

resdepth() { $PY -m resdepth.cli "$@"; }
machine() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "cpus: $(nproc), $(lscpu | sed -n 's/^Model name: *//p')"
  $PY -c "import sys, torch, pytorch_lightning as pl, hydra; from resdepth.rundir import code_version
print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      '| pytorch_lightning', pl.__version__, '| hydra', hydra.__version__, '| resdepth', code_version())"
}
cuda_tests() { $PY -m pytest -q -p no:cacheprovider tests/test_system.py tests/test_data.py tests/test_pack.py -k "cuda or graph or whole"; }
bench() { resdepth bench --data "$BENCH_DATA" --pipelines ours --bn-batch 64 --concurrent 0 --out "$DEST/bench.json"; }
campaign() {  # each group gets what is left of BUDGET; a spent limit stops its runs at a checkpoint (exit 143)
  local budget end rc
  budget=$($PY -c "from resdepth.tables import parse_time; print(int(parse_time('$BUDGET')))" 2>/dev/null) \
    || { echo "gpu-check: BUDGET=$BUDGET: a duration such as 90s, 8m or 1h30m" >&2; return 1; }
  end=$((SECONDS + budget))
  for depths in 20,56 32,44 110; do
    if [ $((end - SECONDS)) -lt 30 ]; then echo "gpu-check: BUDGET=$BUDGET is spent; depths $depths wait for the next call"; continue; fi
    resdepth sweep experiment=paper "${OVERRIDES[@]}" "model.depth=$depths" results_root="$DEST/paper" \
      --time-limit "$((end - SECONDS))s"
    rc=$?; [ $rc = 0 ] || [ $rc = 143 ] || return $rc
  done
  echo "gpu-check: the paper's schedule so far (the same command goes on from here):"
  resdepth results "$DEST/paper"
}
figures() { resdepth plot "$DEST/paper"; }
packs() {  # about 2-4 minutes on an H200
  local common=(--data "$BENCH_DATA" --pipelines ours --concurrent 0 --steps 100 --pack 1,2,4,6,8)
  resdepth bench "${common[@]}" --depths 20,56,110 --bn-batch 64 --out "$DEST/packs.json" &&
    resdepth bench "${common[@]}" --depths 56 --bn-batch 0 --out "$DEST/packs-bn0.json" &&
    resdepth bench "${common[@]}" --depths 56 --bn-batch 64 --compile true --out "$DEST/packs-compile.json"
}

streams() {  # about 2-3 minutes on an H200
  local n t0
  for n in 1 5; do
    t0=$SECONDS
    resdepth sweep experiment=paper "${OVERRIDES[@]}" trainer.max_steps=1000 trainer.eval_every=500 \
      trainer.streams=$n results_root="$DEST/streams/$n" || return
    echo "gpu-check: the paper's 10 nets x 1000 iterations, trainer.streams=$n: $((SECONDS - t0)) s in all"
  done
}

group_bn() {  # under a minute: BN over groups of 64, the loop against one batch-norm call
  PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} $PY experiments/bench/group_bn.py --cuda-only --no-step
}

failed=()
step() {  # step NAME FUNCTION [LOG]: run it (its output also into DEST/LOG), say how it ended
  local log=/dev/null
  [ -z "${3:-}" ] || log=$DEST/$3
  echo "== $1 ($(date +%T))"
  if ! $2 2>&1 | tee "$log"; then echo "== $1 FAILED"; failed+=("$1"); fi
}
step machine machine machine.txt
step "CUDA tests" cuda_tests tests.log
step bench bench bench.log
step "the paper's schedule, within BUDGET=$BUDGET" campaign sweep.log
step figures figures
step "packs against runs alone" packs packs.log
step "packs side by side on CUDA streams" streams streams.log
step "group BN, loop against one call" group_bn group_bn.log
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu-check: failed: ${failed[*]} (outputs so far in $DEST)"; exit 1
fi
echo "gpu-check: done; outputs in $DEST (machine.txt, tests.log, bench.json, paper/, paper/figures/, packs*.json, streams.log, group_bn.log)"
