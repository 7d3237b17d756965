#!/usr/bin/env bash
# Prepared for the next session with a GPU (not yet run): the two open measurements of issue 5.
#   1. torch.compile (default mode) inside the CUDA graph, ResNet-56: does fusing BN/ReLU/add shorten the step?
#      (the 60 s cap of ../gpu_graph_session.sh stopped it while compiling; this one has 240 s)
#   2. the real sweep at 1/8 of the paper's iterations under MPS, 8 runs at once: a measured wall time for the
#      real path (x8 ~ the full sweep), instead of a projection from ResNet-56 alone
# Run from the repository root with .whl/ and .carry/ carried; everything lands in $OUT/results.tgz.
# SMALL=1 shrinks it for a CPU dry run.
set -u
OUT=${OUT:-/tmp/resdepth-out}; mkdir -p "$OUT"
W=$(mktemp -d); pack() { tar czf "$OUT/results.tgz" -C "$W" .; }
source "$(dirname "$0")/gpu_env.sh"
gpu_env_report "$W/env.txt"; pack
if [ "${SMALL:-0}" = 1 ]; then
  C="--depths 8 --steps 4 --warmup 2 --data synthetic"; S="experiment=smoke model.depth=8,14"; T1=120; T2=120; J=2
else
  C="--depths 56 --steps 300 --warmup 30"; S="experiment=eighth data=cifar10_jpeg"; T1=240; T2=300; J=8
fi
echo "== bench: the graph alone, then torch.compile inside the graph (same call, same card) $(date +%T)"
timeout 60 $RD bench $C --pipelines ours --concurrent 0 --out "$W/bench_graph.json" 2>&1 | tee "$W/bench_graph.log"
timeout $T1 $RD bench $C --pipelines ours,minimal --concurrent 0 --compile true --out "$W/bench_compile.json" \
  2>&1 | grep -v '^W[0-9]' | tee "$W/bench_compile.log"; pack
if command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog; mkdir -p /tmp/mps /tmp/mpslog
  nvidia-cuda-mps-control -d && echo "MPS started"
fi
echo "== sweep under MPS: $S, $J at once $(date +%T)"
R=runs-gpu; t0=$(date +%s)
timeout $T2 $RD sweep $S results_root=$R hydra/launcher=parallel hydra.launcher.n_jobs=$J > "$W/sweep.log" 2>&1
echo "sweep exit $? after $(( $(date +%s) - t0 )) s $(date +%T)" | tee -a "$W/sweep.log"; tail -16 "$W/sweep.log"
command -v nvidia-cuda-mps-control > /dev/null && echo quit | nvidia-cuda-mps-control
$RD results $R > /dev/null; $RD plot $R 2>&1 | tail -2
tar czf "$W/runs.tgz" --exclude='*.ckpt' --exclude='model.pt' --exclude='.submitit' "$R"; pack
echo "== end $(date +%T)"
