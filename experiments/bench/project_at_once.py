"""The paper sweep with k runs at once on one GPU, from stored bench JSONs (no GPU needed).

  .venv/bin/python experiments/bench/project_at_once.py [BENCH_JSON [CONCURRENT_JSON ...]]

BENCH_JSON (default h200-graph.json) gives each depth's step and evaluation time, one run alone without MPS.
Each CONCURRENT_JSON (default h200-graph-mps.json, h200-graph-mps-k8.json: `--concurrent` calls under MPS) gives
the speed-ups for k runs at once, relative to its own k=1; one run alone under MPS is a few % slower than without,
so the run times are scaled by that call's k=1 images/s against BENCH_JSON's at the same depth. Then
resdepth.bench.project_sweep_at_once starts the ten runs deepest first, at most k at once, and counts the end of
the sweep, when fewer than k runs are left, at its own lower speed-up.
"""
import json
import sys
from pathlib import Path

from resdepth.bench import project_sweep, project_sweep_at_once, run_seconds

here = Path(__file__).parent
args = sys.argv[1:] or [here / "h200-graph.json", here / "h200-graph-mps.json", here / "h200-graph-mps-k8.json"]
bench = json.loads(Path(args[0]).read_text())
rows = [r for r in bench["rows"] if "ours_ms_per_step" in r]
ms = {r["depth"]: r["ours_ms_per_step"] for r in rows}
evals = {r["depth"]: r["ours_eval_s"] for r in rows if "ours_eval_s" in r}
seconds = run_seconds(ms, evals)
print(f"{Path(args[0]).name} ({bench['device']}): one at a time: {project_sweep(ms, evals) / 60:.1f} min")
for name in args[1:]:
    concurrent = [c for c in json.loads(Path(name).read_text())["concurrent"] if "speedup_vs_k1" in c]
    speedup = {c["k"]: c["speedup_vs_k1"] for c in concurrent}
    one = next(c for c in concurrent if c["k"] == 1)
    scale = next(r["ours_images_per_s"] for r in rows if r["depth"] == one["depth"]) / one["images_per_s"]
    alone = [s * scale for s in seconds]
    print(f"{Path(name).name}: one at a time here ({1 / scale:.3f}x the speed of {Path(args[0]).name}): "
          f"{sum(alone) / 60:.1f} min")
    for k in sorted(speedup):
        if k > 1:
            print(f"  k={k} at once ({speedup[k]:.2f}x): {project_sweep_at_once(alone, speedup, k) / 60:.1f} min "
                  f"(one at a time / speed-up, which ignores the tail: {sum(alone) / speedup[k] / 60:.1f} min; "
                  f"shallowest first: {project_sweep_at_once(alone[::-1], speedup, k) / 60:.1f} min)")
