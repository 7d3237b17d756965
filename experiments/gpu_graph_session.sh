#!/usr/bin/env bash
# One GPU session for the CUDA-graph step (the device tool runs it from the repository root, .whl/ and .carry/
# carried; SMALL=1 shrinks everything for a CPU dry run):
#   1. the CUDA tests (graph vs eager, on-device augmentation)
#   2. resdepth bench with trainer.cuda_graph=auto: depths 20/56/110, ours vs minimal vs the usual pipeline, k=1,2,4
#   3. the same bench row for ResNet-56 with --cuda-graph false (eager, same card, same call)
#   4. the paper's sweep at 1/8 of its iterations (1/16 if the bench says 1/8 would not fit), all 10 runs at once
#   5. torch.compile (default mode) inside the graph, ResNet-56
# Each step has a time cap; after each, everything so far is packed into $OUT/results.tgz (the device tool
# brings back at most 8 files).
set -u
source "$(dirname "$0")/gpu_env.sh"  # $OUT, $W, pack, $PY, $RD, gpu_env_report
gpu_env_report "$W/env.txt"; pack
if [ "${SMALL:-0}" = 1 ]; then
  B="--depths 8,14 --steps 4 --warmup 2 --concurrent 1,2 --data synthetic"; E="--depths 8 --steps 4 --warmup 2 --data synthetic"
  S="experiment=smoke model.depth=8,14"; T0=200; T1=300; T2=300; T3=60; T4=60; J=2
else
  B="--depths 20,56,110 --steps 300 --warmup 30 --concurrent 1,2,4"; E="--depths 56 --steps 200 --warmup 30"
  S=""; T0=75; T1=170; T2=200; T3=40; T4=60; J=10
fi
echo "== CUDA tests $(date +%T)"
timeout $T0 $PY -m pytest -q -x -p no:cacheprovider tests/test_system.py tests/test_data.py -k "cuda or graph or whole" \
  2>&1 | tail -15 | tee "$W/tests.log"; pack
echo "== bench (CUDA graph) $(date +%T)"
timeout $T1 $RD bench $B --out "$W/bench.json" 2>&1 | tee "$W/bench.log"; pack
echo "== bench (eager, same card) $(date +%T)"
timeout $T3 $RD bench $E --pipelines ours,minimal --cuda-graph false --concurrent 0 --out "$W/bench_eager.json" 2>&1 | tee -a "$W/bench.log"; pack
if [ -z "$S" ]; then  # 1/8 of the schedule if the bench says it fits in the sweep's time cap, else 1/16
  S=$($PY - "$W/bench.json" $T2 <<'PYEOF'
import json, sys
from resdepth.bench import _linear
try:
    b = json.load(open(sys.argv[1])); rows = [r for r in b["rows"] if "ours_ms_per_step" in r]
    xs = [r["depth"] for r in rows]; ys = [r["ours_ms_per_step"] for r in rows]
    k4 = [c.get("speedup_vs_k1", 1) for c in b.get("concurrent", []) if c.get("k") == 4] or [1]
    est = sum(2 * 8000 * _linear(d, xs, ys) / 1e3 for d in (20, 32, 44, 56, 110)) / max(k4[0], 1) + 40
except Exception as e:
    print(f"no bench numbers ({e})", file=sys.stderr); est = 1e9
print("experiment=eighth" if est < 0.8 * float(sys.argv[2]) else "experiment=sixteenth")
print(f"estimated 1/8 sweep: {est:.0f} s", file=sys.stderr)
PYEOF
)
  S="$S data=cifar10_jpeg"
fi
echo "== sweep: $S $(date +%T)"
R=runs-gpu; t0=$(date +%s)
timeout $T2 $RD sweep $S results_root=$R hydra/launcher=parallel hydra.launcher.n_jobs=$J > "$W/sweep.log" 2>&1
echo "sweep exit $? after $(( $(date +%s) - t0 )) s $(date +%T)" | tee -a "$W/sweep.log"; tail -25 "$W/sweep.log"
$RD results $R > /dev/null; $RD plot $R 2>&1 | tail -3
tar czf "$W/runs.tgz" --exclude='*.ckpt' --exclude='model.pt' --exclude='.submitit' "$R"; pack
echo "== bench (torch.compile default mode inside the graph) $(date +%T)"
timeout $T4 $RD bench $E --pipelines ours,minimal --concurrent 0 --compile true \
  --out "$W/bench_compile.json" > "$W/bench_compile.log" 2>&1
tail -5 "$W/bench_compile.log"; echo "== end $(date +%T)"; pack
