#!/usr/bin/env bash
# One GPU session (the device tool runs it from the repository root, with .whl/ and .carry/ carried):
#   1. resdepth bench (eager): depths 20/56/110, ours vs minimal loop vs the usual DataLoader pipeline, k=1,2,4
#   2. the paper's sweep at 1/8 of its iterations (experiment=eighth; 1/16, experiment=sixteenth, if the bench
#      says 1/8 would not fit the time cap) on the JPEG CIFAR-10, all 10 runs at once on the GPU
#   3. resdepth bench with torch.compile (reduce-overhead), depth 20
# Each step has a time cap, so whatever finished comes back in $OUT. SMALL=1 shrinks everything for a CPU dry run.
set -u
source "$(dirname "$0")/gpu_env.sh"  # $OUT, $PY, $RD, gpu_env_report
gpu_env_report "$OUT/env.txt"
if [ "${SMALL:-0}" = 1 ]; then
  B="--depths 8,14 --steps 4 --warmup 2 --concurrent 1,2 --data synthetic"; S="experiment=smoke model.depth=8,14"; C="--depths 8 --steps 4 --warmup 2 --data synthetic"
  T1=300; T2=300; T3=5; J=2
else
  B="--depths 20,56,110 --steps 200 --warmup 30 --concurrent 1,2,4"; S="experiment=eighth data=cifar10_jpeg"; C="--depths 20 --steps 200 --warmup 30"
  T1=160; T2=310; T3=60; J=10
fi
echo "== bench (eager) $(date +%T)"
timeout $T1 $RD bench $B --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
if [ "${SMALL:-0}" != 1 ]; then  # 1/8 of the schedule if the bench says it fits in the sweep's time cap, else 1/16
  S=$($PY - "$OUT/bench.json" $T2 <<'PYEOF'
import json, sys
from resdepth.bench import _linear
b = json.load(open(sys.argv[1])); rows = [r for r in b["rows"] if "ours_ms_per_step" in r]
xs = [r["depth"] for r in rows]; ys = [r["ours_ms_per_step"] for r in rows]
k4 = [c.get("speedup_vs_k1", 1) for c in b.get("concurrent", []) if c.get("k") == 4] or [1]
est = sum(2 * 8000 * _linear(d, xs, ys) / 1e3 for d in (20, 32, 44, 56, 110)) / max(k4[0], 1) + 40
print("experiment=eighth" if est < 0.8 * float(sys.argv[2]) else "experiment=sixteenth", file=sys.stdout)
print(f"estimated 1/8 sweep: {est:.0f} s with k=4 speed-up {k4[0]:.2f}", file=sys.stderr)
PYEOF
) || S="experiment=sixteenth"
  S="$S data=cifar10_jpeg"
fi
echo "== sweep: $S $(date +%T)"
R=runs-gpu
timeout $T2 $RD sweep $S results_root=$R hydra/launcher=parallel hydra.launcher.n_jobs=$J > "$OUT/sweep.log" 2>&1
echo "sweep exit $? $(date +%T)"; tail -25 "$OUT/sweep.log"
$RD results $R > /dev/null; $RD plot $R 2>&1 | tail -3
tar czf "$OUT/runs.tgz" --exclude='*.ckpt' --exclude='model.pt' --exclude='.submitit' "$R"
echo "== bench (compile, reduce-overhead) $(date +%T)"
timeout $T3 $RD bench $C --pipelines ours,minimal --concurrent 0 --compile true --compile-mode reduce-overhead \
  --out "$OUT/bench_compile.json" > "$OUT/bench_compile.log" 2>&1
tail -5 "$OUT/bench_compile.log"; echo "== end $(date +%T)"
