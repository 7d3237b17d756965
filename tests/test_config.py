"""Config: run-directory names that survive new settings, typed choices, one-line validation."""

import json
from pathlib import Path

import pytest

from resdepth import config
from resdepth.config import config_hash, semantic_config

from .conftest import REPO, compose, run_cli

# The names `resdepth sweep` (the paper's protocol: BN over 64 images, the bounded warm-up of
# depth 110) gives its runs (results_root=R).
PAPER_RUNS = {
    (20, "plain"): "R/cifar10/plain-20/seed0-985021b4",
    (20, "residual"): "R/cifar10/residual-20/seed0-61ae526d",
    (56, "plain"): "R/cifar10/plain-56/seed0-ecd969a6",
    (56, "residual"): "R/cifar10/residual-56/seed0-b73dda00",
    (110, "plain"): "R/cifar10/plain-110/seed0-81c60959",
    (110, "residual"): "R/cifar10/residual-110/seed0-68575113",
}
# The names `resdepth sweep experiment=demo` gives its runs (results_root=R). Changing one of
# these loses every user's finished demo runs: they are no longer found to skip or resume.
DEMO_RUNS = {
    (20, "plain"): "R/cifar10_jpeg/plain-20/seed0-a1badfbd",
    (20, "residual"): "R/cifar10_jpeg/residual-20/seed0-fa928a3e",
    (56, "plain"): "R/cifar10_jpeg/plain-56/seed0-a4f9310b",
    (56, "residual"): "R/cifar10_jpeg/residual-56/seed0-a697974e",
}
SMOKE_RUNS = {
    (8, "plain"): "R/synthetic/plain-8/seed0-2f7c0c59",
    (56, "residual"): "R/synthetic/residual-56/seed0-f3fdd958",
}


@pytest.mark.parametrize("preset, runs", [("paper", PAPER_RUNS), ("demo", DEMO_RUNS),
                                          ("smoke", SMOKE_RUNS)])
def test_run_directory_names_are_pinned(preset, runs):
    for (depth, block), name in runs.items():
        cfg = compose([f"experiment={preset}", f"model.depth={depth}", f"model.block={block}",
                       "results_root=R"])
        assert cfg["run_dir"] == name


def test_committed_runs_keep_their_directory_names():
    results = sorted((REPO / "experiments").glob("*/runs/*/*/*/result.json"))
    assert len(results) >= 20
    for path in results:
        cfg = json.loads(path.read_text())["config"]
        m = cfg["model"]
        assert (f"{cfg['data']['name']}/{m['block']}-{m['depth']}/"
                f"seed{cfg['seed']}-{config_hash(cfg)}") == \
            "/".join(path.parent.parts[-3:]), path


def test_a_new_setting_at_its_legacy_value_keeps_the_old_directory(monkeypatch, tmp_path):
    from resdepth import rundir
    from resdepth.training.train import train

    cfg = compose(["experiment=smoke", "model.depth=8", f"results_root={tmp_path}",
                   "trainer.progress=false"])
    first = train(cfg)
    # a setting added later; 1 does what we did before
    monkeypatch.setitem(config.LEGACY, "optim.new_setting", 1)
    same = {**cfg, "optim": {**cfg["optim"], "new_setting": 1}}
    assert config_hash(same) == config_hash(cfg)
    # found, skipped
    assert rundir.finished_result(Path(cfg["run_dir"]), semantic_config(same)) == first
    other = {**cfg, "optim": {**cfg["optim"], "new_setting": 2}}
    assert config_hash(other) != config_hash(cfg)


def test_warmup_settings_of_a_net_that_does_not_warm_up_cannot_rename_it():
    paper = compose(["model.depth=20"])
    changed = {**paper, "optim": {**paper["optim"], "warmup_window": 77, "warmup_max_steps": 123}}
    assert config_hash(changed) == config_hash(paper)
    deep = compose(["model.depth=110"])
    changed = {**deep, "optim": {**deep["optim"], "warmup_window": 77}}
    # ResNet-110 warms up: the window changes its training
    assert config_hash(changed) != config_hash(deep)


@pytest.mark.parametrize("override, message", [
    ("trainer.accelerator=tpu", "Invalid value 'tpu', expected one of [auto, cpu, gpu, cuda]"),
    ("trainer.compile_mode=fast",
     "Invalid value 'fast', expected one of [default, reduce-overhead"),
    ("trainer.precision=64",
     "Invalid value '64', expected one of [auto, 32-true, 32, bf16-mixed, bf16, 16-mixed, 16]"),
    ("trainer.cuda_graph=maybe", "trainer.cuda_graph='maybe' is not one of auto, true, false"),
    ("optim.warmup=sometimes", "optim.warmup='sometimes' is not one of auto, true, false"),
])
def test_cfg_job_rejects_a_bad_choice_with_the_allowed_list(override, message):
    proc = run_cli("train", override, "--cfg", "job")
    assert (proc.returncode == 2 and message in proc.stderr
            and len(proc.stderr.strip().splitlines()) == 1), proc.stderr


def test_typed_choices_accept_what_the_shell_types():
    cfg = compose(["trainer.precision=32", "trainer.cuda_graph=false", "optim.warmup=true",
                   "trainer.accelerator=cpu"])
    assert (cfg["trainer"]["precision"], cfg["trainer"]["cuda_graph"],
            cfg["optim"]["warmup"]) == ("32-true", "False", "True")
    config.validate(cfg)


@pytest.mark.parametrize("spellings", [("32-true", "32", "'32'"), ("bf16-mixed", "bf16"),
                                       ("16-mixed", "16", "'16'")])
def test_every_spelling_lightning_accepts_is_one_precision_one_run(spellings):
    """Lightning's spellings of a precision: the config holds the canonical one, so the run is
    recorded, hashed and named as if it had been typed."""
    canonical = spellings[0]
    cfgs = [compose([f"trainer.precision={s}"]) for s in spellings]
    assert {c["trainer"]["precision"] for c in cfgs} == {canonical}
    assert len({c["run_dir"] for c in cfgs}) == 1


def test_a_config_recorded_before_later_settings_loads_at_their_legacy_values():
    from resdepth.training.system import System

    path = REPO / ("experiments/cifar10-jpeg-cpu-demo/runs/cifar10_jpeg/residual-20/"
                   "seed0-fa928a3e/result.json")
    old = json.loads(path.read_text())["config"]
    assert ("pad" not in old["data"] and "bn_batch" not in old["optim"]
            and "eval_batch_size" not in old["trainer"])
    filled = config.fill_legacy(old)
    assert (filled["data"]["pad"], filled["optim"]["bn_batch"],
            filled["trainer"]["eval_batch_size"]) == (4, 0, 1000)
    assert config_hash(filled) == config_hash(old)  # the same run, under the same name
    assert System(old).cfg["optim"]["warmup_max_steps"] == 0  # an older checkpoint's System builds
