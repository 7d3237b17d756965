"""resdepth as users install it: a wheel that carries its configs and runs from any folder,
`python -m resdepth`, `--version`, and the bash completion of its commands, keys and presets."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, compose, run_cli

SMOKE = ("experiment=smoke", "trainer.max_steps=10", "trainer.eval_every=5")


def test_version_comes_from_the_package_metadata():
    import resdepth

    assert resdepth.__version__ == "0.1.0"
    for args in (["--version"], ["-V"]):
        proc = run_cli(*args)
        assert proc.returncode == 0 and proc.stdout == "resdepth 0.1.0\n", proc.stderr
    # the `resdepth` command answers --version without importing torch (seconds on a CPU)
    probe = subprocess.run([sys.executable, "-c", "import sys; from resdepth.__main__ import main; "
                            "main(['--version']); print(sorted({'torch', 'hydra'} & "
                            "{m.split('.')[0] for m in sys.modules}))"],
                           cwd=REPO, capture_output=True, text=True)
    assert probe.stdout == "resdepth 0.1.0\n[]\n", probe.stderr


def test_python_dash_m_resdepth_is_the_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "resdepth", "--help"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert (proc.returncode == 0 and "resdepth train" in proc.stdout
            and "resdepth completion bash" in proc.stdout)
    # a usage line, then one sentence on what resdepth is
    assert proc.stdout.startswith("usage: resdepth COMMAND [ARGS ...]\n\nresdepth reproduces the "
                                  "central experiment of the ResNet paper")


def _wheel(tmp_path: Path) -> Path:
    """Build resdepth's wheel from a copy of the source tree (the repository stays untouched: no
    build/) and install it, without dependencies (those of the running environment serve), into
    tmp_path/site."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("resdepth", "conf", "hydra_plugins"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", ".", "-w",
                    str(tmp_path / "wheel")],
                   cwd=src, check=True, capture_output=True, timeout=300)
    wheel, = (tmp_path / "wheel").glob("resdepth-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return tmp_path / "site"


@pytest.mark.slow
def test_the_installed_wheel_trains_sweeps_and_plots_from_any_folder(tmp_path):
    site, work, root = _wheel(tmp_path), tmp_path / "work", tmp_path / "R"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RESDEPTH_DATA"}
    env.update(PYTHONPATH=str(site), PYTHONUNBUFFERED="1", XDG_CACHE_HOME=str(tmp_path / "cache"))

    def resdepth(*args):
        return subprocess.run([sys.executable, "-m", "resdepth", *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=900)

    probe = subprocess.run([sys.executable, "-c",
                            "import resdepth, resdepth.config as c, resdepth.data as d; "
                            "from hydra.core.plugins import Plugins; "
                            "from hydra.plugins.launcher import Launcher; "
                            "import hydra_plugins.resdepth_slurm as slurm; "
                            "print(resdepth.__file__, c.CONF_DIR, d.resolve_path('data'), "
                            "d.resolve_path(c.compose([])[0]['data']['root']), "
                            "resdepth.__version__, slurm.__file__, slurm.SlurmLauncher in "
                            "Plugins.instance().discover(Launcher), sep='\\n')"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    package, conf, data, default_data, version, slurm, found = probe.stdout.splitlines()
    assert (Path(package).is_relative_to(site)
            and Path(conf) == site / "resdepth" / "conf"), probe.stdout
    # hydra/launcher=slurm: Hydra finds resdepth's launcher in the wheel's hydra_plugins
    assert Path(slurm).is_relative_to(site) and found == "True", probe.stdout
    # datasets go to the cwd's data/, not the install
    assert data == default_data == "data" and version == "0.1.0"
    for args in (["train", *SMOKE, "model.depth=8", f"results_root={root}"],
                 ["sweep", *SMOKE, f"results_root={root}"],
                 ["plot", str(root)]):
        proc = resdepth(*args)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
    # the 2 x 2 grid, residual-8 skipped as trained
    assert len(list(root.glob("synthetic/*/seed0-*/result.json"))) == 4
    assert (root / "figures" / "report.md").is_file()
    assert not list(work.iterdir())  # nothing written where it ran


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_is_valid_and_completes_commands_keys_and_presets(tmp_path):
    exe = Path(sys.executable).parent / "resdepth"  # the console script the completion asks
    if not exe.exists():
        pytest.skip("no resdepth console script beside this python")
    proc = run_cli("completion", "bash")
    assert proc.returncode == 0
    script = tmp_path / "resdepth.bash"
    script.write_text(proc.stdout)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "mine.yaml").write_text("# @package _global_\nseed: 1\n")
    lines = {  # the line typed so far -> what replaces the word under the cursor
        f"{exe} tr": "train",
        f"{exe} ": "train sweep results plot log bench completion",
        f"{exe} train model.dep": "model.depth=",
        f"{exe} train experiment=smo": "smoke",  # = breaks words: readline replaces what follows it
        f"{exe} sweep --config-dir {tmp_path / 'mine'} experiment=mi": "mine",
        f"{exe} sweep --pl": "--plan",
        f"{exe} train model.block=": "plain residual",  # the allowed values, not Block.residual
        f"{exe} train model.shortcut=": "A B",
        f"{exe} sweep trainer.cuda_graph=": "auto true false",
        f"{exe} train trainer.compile=": "true false",
        f"{exe} sweep data=": "cifar10 cifar100 cifar10_jpeg fashion_mnist image_folder synthetic",
        f"{exe} sweep data=_": "",  # never a private group file (_common.yaml)
        f"{exe} sweep hydra/launcher=": "basic parallel slurm",
    }
    query = "\n".join(f'q "{line}"' for line in lines)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", "-c",
                           f'source {script}\nq() {{ COMP_LINE=$1; COMP_POINT=${{#1}}; '
                           f'COMPREPLY=(); _resdepth_complete; echo "${{COMPREPLY[*]}}"; }}\n'
                           f'{query}'],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert dict(zip(lines, proc.stdout.splitlines())) == lines
    # once the table is cached, a TAB imports neither torch nor Hydra (it answers at once)
    probe = subprocess.run([sys.executable, "-c", "import sys; from resdepth.__main__ import main; "
                            "main(['completion', 'query', 'train', '--', 'model.bl']); "
                            "print(sorted({'torch', 'hydra'} & "
                            "{m.split('.')[0] for m in sys.modules}))"],
                           cwd=tmp_path, capture_output=True, text=True, env=env)
    assert probe.stdout == "model.block=\n[]\n", probe.stderr


def test_relative_data_paths_come_from_the_cwd_then_from_the_clone(tmp_path, monkeypatch):
    from resdepth.data import in_source_tree, resolve_path

    monkeypatch.chdir(tmp_path)
    assert in_source_tree()  # these tests run from the repository
    assert resolve_path("data") == REPO / "data"  # a clone's data/ serves every folder
    (tmp_path / "data").mkdir()
    assert resolve_path("data") == Path("data")  # the cwd's own comes first
    assert resolve_path("~/x") == Path.home() / "x"
    monkeypatch.setenv("RESDEPTH_DATA", str(tmp_path / "datasets"))
    assert compose([])["data"]["root"] == str(tmp_path / "datasets")
