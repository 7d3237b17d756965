#!/usr/bin/env bash
# Prepared for the next session with a GPU (not yet run): what issue 5 still lacks, most important first.
# Issue 5's last target is "the paper sweep projected under 30 min on one H100", and no H100 has been measured
# yet, so ask for one: the device tool's `kind: nvidia-h100-x1` (a call that names it gets no other kind; if it is
# refused, fall back to the H200 and say so).
#   PART=1 (about 9 min):
#     a. resdepth bench, CUDA graph, depths 20/56/110: ours vs minimal vs the usual pipeline, and the projection
#        of the full sweep one run at a time
#     b. under MPS: ResNet-56, k = 1, 4, 8 runs at once; the sweep projected with k at once
#        (experiments/bench/project_at_once.py: deepest first, the end of the sweep counted)
#     c. torch.compile (default mode) inside the graph, ResNet-56 (the 60 s cap of gpu_graph_session.sh stopped
#        it while compiling; 180 s here)
#     d. experiments/bench/profile_step.py: a ResNet-56 step's kernel time by kind (convolution, batch norm,
#        elementwise, SGD), to see whether the step is the sum of its kernels and which kind to shrink next
#   PART=2 (about 5 min, if device time is left): the real sweep at 1/8 of the paper's iterations under MPS,
#     4 runs at once as the README advises (x8 ~ the full sweep), instead of a projection from ResNet-56 alone
# Run from the repository root with .whl/ and .carry/ carried: `PART=1 bash experiments/gpu_next_session.sh`.
# Both are git-ignored (.git/info/exclude); to make them on a fresh checkout:
#   .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl hydra-core==1.3.8 \
#     omegaconf==2.3.1 hydra-joblib-launcher==1.2.0
#   .venv/bin/pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
#   mkdir -p .carry && cp ../shared/data/cifar10-jpeg.tar.gz .carry/
# Everything lands in $OUT/results.tgz. SMALL=1 shrinks it for a CPU dry run.
set -u
source "$(dirname "$0")/gpu_env.sh"  # $OUT, $W, pack, $PY, $RD, gpu_env_report
gpu_env_report "$W/env.txt"; pack
if [ "${SMALL:-0}" = 1 ]; then
  B="--depths 8,14 --steps 4 --warmup 2 --data synthetic"; C="--depths 8 --steps 4 --warmup 2 --data synthetic"
  K=1,2; S="experiment=smoke model.depth=8,14"; T=(120 120 120 120 60); J=2; P="--depth 8 --steps 2"
else
  B="--depths 20,56,110 --steps 300 --warmup 30"; C="--depths 56 --steps 300 --warmup 30"
  K=1,4,8; S="experiment=eighth data=cifar10_jpeg"; T=(200 110 180 330 60); J=4; P="--depth 56 --steps 20"
fi
mps_start() {
  command -v nvidia-cuda-mps-control > /dev/null || { echo "no nvidia-cuda-mps-control: runs without MPS"; return; }
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog; mkdir -p /tmp/mps /tmp/mpslog
  nvidia-cuda-mps-control -d && echo "MPS started"
}
mps_stop() { command -v nvidia-cuda-mps-control > /dev/null && echo quit | nvidia-cuda-mps-control; sleep 1; }

if [ "${PART:-1}" = 1 ]; then
  echo "== a. bench, CUDA graph $(date +%T)"
  timeout ${T[0]} $RD bench $B --concurrent 0 --out "$W/bench.json" 2>&1 | tee "$W/bench.log"; pack
  echo "== b. several runs at once under MPS $(date +%T)"
  mps_start
  timeout ${T[1]} $RD bench $C --pipelines ours --concurrent $K --out "$W/bench_mps.json" 2>&1 | tee "$W/bench_mps.log"
  mps_stop; pack
  $PY experiments/bench/project_at_once.py "$W/bench.json" "$W/bench_mps.json" 2>&1 | tee "$W/projection.txt"
  pack
  echo "== c. torch.compile (default mode) inside the graph $(date +%T)"
  timeout ${T[2]} $RD bench $C --pipelines ours,minimal --concurrent 0 --compile true --out "$W/bench_compile.json" \
    2>&1 | grep -v '^W[0-9]' | tee "$W/bench_compile.log"; pack
  echo "== d. where a ResNet-56 step's GPU time goes (kernels by kind) $(date +%T)"
  timeout ${T[4]} $PY experiments/bench/profile_step.py $P --out "$W/profile56.json" 2>&1 | grep -v '^USDT\|^ERROR:\|^STAGE:' \
    | tee "$W/profile56.log"; pack
else
  mps_start
  echo "== sweep under MPS: $S, $J at once $(date +%T)"
  R=runs-gpu; t0=$(date +%s)
  timeout ${T[3]} $RD sweep $S results_root=$R hydra/launcher=parallel hydra.launcher.n_jobs=$J > "$W/sweep.log" 2>&1
  echo "sweep exit $? after $(( $(date +%s) - t0 )) s $(date +%T)" | tee -a "$W/sweep.log"; tail -16 "$W/sweep.log"
  mps_stop
  $RD results $R > /dev/null; $RD plot $R 2>&1 | tail -2
  tar czf "$W/runs.tgz" --exclude='*.ckpt' --exclude='model.pt' --exclude='.submitit' "$R"; pack
fi
echo "== end $(date +%T)"
