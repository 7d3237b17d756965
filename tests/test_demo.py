"""The demo preset at a tiny budget, end to end on the real CIFAR-10 images (the JPEG copy in
../shared/data)."""

import json

import pytest

from resdepth.analysis.runs import find_results

from .conftest import SHARED_JPEG, run_cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHARED_JPEG.exists(), reason=f"{SHARED_JPEG} not present")]


def test_demo_preset_on_real_images(tmp_path):
    proc = run_cli("sweep", "experiment=demo", "data=cifar10_jpeg", f"results_root={tmp_path}",
                   "trainer.max_steps=4", "trainer.eval_every=2", "data.test_subset=256")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {(r["block"], r["depth"]): r for _, r in find_results(tmp_path)}
    assert set(runs) == {("plain", 20), ("plain", 56), ("residual", 20), ("residual", 56)}
    for r in runs.values():
        assert (r["status"] == "done" and r["dataset"] == "cifar10_jpeg"
                and r["train_images"] == 50_000)
        assert r["config"]["optim"]["lr"] == 0.1 and r["config"]["optim"]["batch_size"] == 128
        assert 0 < r["final_test_error"] < 1
    plot = run_cli("plot", str(tmp_path))
    assert plot.returncode == 0, plot.stderr[-2000:]
    for name in ("fig6_curves.png", "fig6_curves.pdf", "depth_vs_error.png", "table6.md",
                 "report.md"):
        assert (tmp_path / "figures" / name).exists(), name
    assert "cifar10_jpeg" in (tmp_path / "figures" / "report.md").read_text()
    assert json.loads((tmp_path / "sweep.json").read_text())["command"].startswith(
        "resdepth sweep experiment=demo")
