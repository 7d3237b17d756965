"""`from resdepth import load_run`: a run's trained net for raw images, its config and metrics; and
System.load_from_checkpoint on a batch; docs/notebook.md's cells, run in order."""

import ast
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from resdepth import load_run
from resdepth.data import DataModule
from resdepth.training.system import System
from resdepth.training.train import train

from .conftest import REPO, compose

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
    assert [r["iteration"] for r in loaded.rows] == [10, 20]
    assert loaded.rows[-1]["test_error"] == result["final_test_error"]
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


def test_metrics_are_the_list_of_dicts_without_pandas(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    metrics = load_run(run[0]).metrics
    assert isinstance(metrics, list) and [r["iteration"] for r in metrics] == [10, 20]


def test_metrics_go_through_pandas_when_it_imports(run, monkeypatch):
    fake = types.SimpleNamespace(DataFrame=lambda rows: ("a frame of", rows))
    monkeypatch.setitem(sys.modules, "pandas", fake)  # runs where pandas is not installed
    loaded = load_run(run[0])
    assert loaded.metrics == ("a frame of", loaded.rows)


def test_metrics_are_a_dataframe_with_pandas(run):
    pandas = pytest.importorskip("pandas")
    run_dir, result, _ = run
    metrics = load_run(run_dir).metrics
    assert isinstance(metrics, pandas.DataFrame) and list(metrics["iteration"]) == [10, 20]
    assert metrics["test_error"].iloc[-1] == result["final_test_error"]


def test_the_repr_is_one_line(run):
    run_dir, result, _ = run
    assert repr(load_run(run_dir)) == (
        f"TrainedRun(ResNet-8 seed 0, synthetic, done, "
        f"test error {100 * result['final_test_error']:.2f}%, 20 iterations, {run_dir})")


def test_normalised_images_are_refused_in_one_line(run):
    run_dir, _, test = run
    net = load_run(run_dir).net
    images = test.images[:16]
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    normalised = (images.float() / 255 - mean[:, None, None]) / std[:, None, None]
    with pytest.raises(ValueError, match=r"^run.net expects uint8 images \(0-255\) or floats in "
                       r"\[0, 1\].*; got floats from -[\d.]+ to [\d.]+: pass the images before "
                       r"Normalize[^\n]*$"):
        net(normalised)
    with pytest.raises(ValueError, match=r"got floats from \d+ to \d+: "):  # 0-255 floats
        net(images.float())
    with pytest.raises(ValueError, match="got torch.int64: convert to uint8"):
        net(images.long())
    with torch.no_grad():  # the accepted forms agree
        assert torch.equal(net(images).argmax(1), net(images.float() / 255).argmax(1))
        assert torch.equal(net(images), net(images.double() / 255))


def _run_cell(code: str, namespace: dict):
    """Run a notebook cell; the value of its last line when that is an expression, as Jupyter."""
    tree = ast.parse(code)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace) if last else None


def test_the_notebook_example_runs(run, monkeypatch, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir, result, test = run
    text = (REPO / "docs" / "notebook.md").read_text()
    example = "runs/cifar10/residual-56/seed0-1f3a9c2e"
    assert example in text
    cells = re.findall(r"^```python\n(.*?)^```", text.replace(example, str(run_dir)), re.M | re.S)
    assert len(cells) == 4
    monkeypatch.chdir(tmp_path)  # whatever a cell writes goes here
    namespace: dict = {}
    shown = [_run_cell(cell, namespace) for cell in cells]
    try:
        assert repr(shown[0]).startswith("TrainedRun(ResNet-8 seed 0, synthetic, done")
        assert len(shown[1]) == 2  # the records at 10 and 20, as a table or a list
        line = namespace["ax"].lines[0]
        assert list(line.get_xdata()) == [10, 20]
        assert line.get_ydata()[-1] == pytest.approx(100 * result["final_test_error"])
        assert shown[3] == [(f"class{p}", f"class{t}") for p, t in zip(
            namespace["predicted"].tolist(), test.labels[:8].tolist())]
    finally:
        plt.close("all")
