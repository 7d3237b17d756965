"""`from resdepth import load_run`: a run's trained net for raw images, its config and metrics; and
System.load_from_checkpoint on a batch."""

from pathlib import Path

import pytest
import torch

from resdepth import load_run
from resdepth.data import DataModule
from resdepth.training.system import System
from resdepth.training.train import train

from .conftest import compose

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished smoke run in fp32 (the records' test error then comes from the same arithmetic
    as ours)."""
    root = tmp_path_factory.mktemp("load")
    cfg = compose(["experiment=smoke", f"results_root={root}", "model.depth=8",
                   "trainer.max_steps=20", "data.train_size=256", "trainer.precision=32-true",
                   "trainer.progress=false"])
    result = train(cfg)
    test = DataModule(cfg["data"], batch_size=32, seed=0).load().eval_splits["test"]
    return Path(cfg["run_dir"]), result, test


def _error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) != labels).float().mean().item()


def test_a_run_classifies_raw_images_with_its_recorded_error(run):
    run_dir, result, test = run
    loaded = load_run(run_dir)
    assert test.images.dtype == torch.uint8
    with torch.no_grad():
        assert _error(loaded.net(test.images), test.labels) == pytest.approx(
            result["final_test_error"], abs=1e-9)
        assert _error(loaded.net(test.images.float() / 255), test.labels) == pytest.approx(
            result["final_test_error"], abs=1e-9)
    assert loaded.config["model"]["depth"] == 8 and loaded.result["status"] == "done"
    assert [r["iteration"] for r in loaded.metrics] == [10, 20]
    assert loaded.metrics[-1]["test_error"] == result["final_test_error"]
    assert loaded.net.classes == [f"class{i}" for i in range(10)] and not loaded.net.training


def test_an_older_model_file_gets_the_mean_from_the_dataset(run, tmp_path):
    run_dir, result, test = run
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "metrics.csv", "result.json"):
        (old / name).write_bytes((run_dir / name).read_bytes())
    # weights alone
    torch.save(torch.load(run_dir / "model.pt", weights_only=True)["state_dict"],
               old / "model.pt")
    with torch.no_grad():
        assert _error(load_run(old).net(test.images), test.labels) == pytest.approx(
            result["final_test_error"], abs=1e-9)


def test_an_unfinished_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no model.pt: the run has not finished"):
        load_run(tmp_path)


def test_the_checkpoint_loads_as_a_module_callable_on_a_batch(run):
    run_dir, result, test = run
    saved_rng = torch.load(run_dir / "last.ckpt", weights_only=False)["resdepth"]["rng"]["torch"]
    system = System.load_from_checkpoint(run_dir / "last.ckpt", map_location="cpu").eval()
    # a net to use: the run's random state is not restored
    assert not torch.equal(torch.get_rng_state(), saved_rng)
    mean = load_run(run_dir).net.mean
    with torch.no_grad():
        logits = system(test.images.float() / 255 - mean)
    assert logits.shape == (len(test), 10)
    assert _error(logits, test.labels) == pytest.approx(result["final_test_error"], abs=1e-9)
