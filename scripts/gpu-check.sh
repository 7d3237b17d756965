#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one command; its outputs go into the folder DEST:
#   machine.txt    the GPU, driver, CPU, Python, torch, Lightning, Hydra and resdepth versions
#   tests.log      the CUDA tests: the CUDA-graph step against eager training (step by step and end to end) and
#                  the augmentation on the GPU (they skip on a machine without one)
#   bench.json     resdepth bench: ms per step of our path, a minimal loop and the usual DataLoader pipeline, for
#                  ResNet-20/56/110, our path again with logger=csv attached, and 1, 2 and 4 runs at once;
#                  bench.log what it printed
#   runs/          the paper's sweep at 1/16 of its iterations (experiment=sixteenth, 10 nets x 4000 iterations),
#                  with runs/figures/ (Figure 6, Figure 7, error vs depth, Table 6, report.md); sweep.log
# Usage: scripts/gpu-check.sh DEST [RESDEPTH_OVERRIDES ...]   (make gpu-check DEST=folder picks the dataset)
# Each step goes on when an earlier one fails; the exit status is 1 if any failed.
set -u -o pipefail
DEST=${1:?usage: scripts/gpu-check.sh DEST [overrides...]}; shift
OVERRIDES=("$@")  # for the sweep: the dataset (make gpu-check picks it) and anything else
PY=${PY:-python3}
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
cuda_tests() { $PY -m pytest -q -p no:cacheprovider tests/test_system.py tests/test_data.py -k "cuda or graph or whole"; }
bench() { resdepth bench --data "$BENCH_DATA" --logger csv --out "$DEST/bench.json"; }
sweep() { resdepth sweep experiment=sixteenth "${OVERRIDES[@]}" results_root="$DEST/runs"; }
figures() { resdepth plot "$DEST/runs"; }

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
step "sweep, 1/16 of the paper's iterations" sweep sweep.log
step figures figures
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu-check: failed: ${failed[*]} (outputs so far in $DEST)"; exit 1
fi
echo "gpu-check: done; outputs in $DEST (machine.txt, tests.log, bench.json, runs/, runs/figures/)"
