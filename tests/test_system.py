import math

import pytest

from resdepth.results import read_json, read_metrics
from resdepth.system import lr_at, warmup_enabled
from resdepth.train import train

from .conftest import compose

PAPER = compose([])["optim"]


@pytest.mark.parametrize("step,lr", [(0, 0.1), (31_999, 0.1), (32_000, 0.01), (47_999, 0.01), (48_000, 0.001),
                                     (63_999, 0.001)])
def test_paper_schedule(step, lr):
    assert lr_at(step, PAPER) == pytest.approx(lr)


def test_warmup_lr_until_switched_and_never_past_the_first_milestone():
    assert lr_at(0, PAPER, warming_up=True) == 0.01
    assert lr_at(399, PAPER, warming_up=True) == 0.01
    assert lr_at(400, PAPER, warming_up=False) == 0.1
    assert lr_at(32_000, PAPER, warming_up=True) == pytest.approx(0.01)  # scheduled lr, not the warm-up lr


def test_warmup_setting():
    assert warmup_enabled(PAPER, 110) and not warmup_enabled(PAPER, 56)
    assert warmup_enabled({**PAPER, "warmup": True}, 20) and not warmup_enabled({**PAPER, "warmup": "false"}, 110)
    with pytest.raises(ValueError, match="optim.warmup='maybe' is not one of auto, true, false"):
        warmup_enabled({**PAPER, "warmup": "maybe"}, 20)


def _tiny(tmp_path, *extra):
    return compose(["experiment=smoke", f"results_root={tmp_path}", "model.depth=8", "trainer.progress=false",
                    *extra])


def test_warmup_switches_back_to_the_base_lr(tmp_path):
    cfg = _tiny(tmp_path, "optim.warmup=true", "optim.warmup_window=5", "optim.warmup_until_error=0.85",
                "trainer.eval_every=5", "optim.milestones=[1000]")
    result = train(cfg)
    ended = result["warmup_ended_at"]
    assert ended is not None and ended % 5 == 0 and 5 <= ended < 40
    rows = read_metrics(f"{cfg['run_dir']}/metrics.csv")
    lrs = {r["iteration"]: r["lr"] for r in rows}
    assert all(lrs[i] == 0.01 for i in lrs if i <= ended)  # record i shows the lr of iteration i - 1
    assert all(lrs[i] == 0.1 for i in lrs if i > ended)


def test_warmup_that_never_reaches_the_threshold_keeps_warming(tmp_path):
    cfg = _tiny(tmp_path, "optim.warmup=true", "optim.warmup_window=5", "optim.warmup_until_error=0.0",
                "optim.milestones=[1000]")
    result = train(cfg)
    assert result["warmup_ended_at"] is None
    assert {r["lr"] for r in read_metrics(f"{cfg['run_dir']}/metrics.csv")} == {0.01}


def test_records_and_result(tmp_path):
    cfg = _tiny(tmp_path, "data.val_size=256")
    result = train(cfg)
    rows = read_metrics(f"{cfg['run_dir']}/metrics.csv")
    assert [r["iteration"] for r in rows] == [10, 20, 30, 40]
    assert all(0 <= r["train_error"] <= 1 and 0 <= r["test_error"] <= 1 and 0 <= r["val_error"] <= 1 for r in rows)
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.1, 0.001])  # milestones 30, 36 in smoke
    assert result["final_test_error"] == rows[-1]["test_error"]
    assert result["final_train_error"] == pytest.approx(rows[-1]["train_error"])
    assert result["best_test_error"] == min(r["test_error"] for r in rows)
    assert result["status"] == "done" and result["steps"] == 40 and result["params"] == 75_290
    assert rows[-1]["train_error"] < rows[0]["train_error"]  # it learns
    saved = read_json(f"{cfg['run_dir']}/result.json")
    assert saved["final_val_error"] == rows[-1]["val_error"] and saved["config"]["seed"] == 0
    responses = read_json(f"{cfg['run_dir']}/responses.json")["layer_std"]
    assert len(responses) == 7 and all(s > 0 and math.isfinite(s) for s in responses)
