"""scripts/dataset.sh: which CIFAR-10 `make demo`, `make reproduce` and `make gpu-check` train on."""

import subprocess

from .conftest import REPO

NO_NETWORK = "false"  # as the python that checks the network: it fails, as without one


def _pick(data, jpeg, tmp_path):
    return subprocess.run([str(REPO / "scripts" / "dataset.sh"), data, str(jpeg), NO_NETWORK], cwd=tmp_path,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})


def test_data_given_is_used(tmp_path):
    proc = _pick("synthetic", tmp_path / "none.tar.gz", tmp_path)
    assert proc.returncode == 0 and proc.stdout.split() == ["data=synthetic"]


def test_cifar10_in_data_comes_first(tmp_path):
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    proc = _pick("", tmp_path / "none.tar.gz", tmp_path)
    assert proc.returncode == 0 and proc.stdout.split() == ["data=cifar10"]


def test_without_network_the_jpeg_copy_is_used(tmp_path):
    jpeg = tmp_path / "cifar10-jpeg.tar.gz"
    jpeg.write_bytes(b"")
    proc = _pick("", jpeg, tmp_path)
    assert proc.returncode == 0 and proc.stdout.split() == ["data=cifar10_jpeg", f"data.path={jpeg}"]
    assert "no network" in proc.stderr


def test_with_neither_one_message_says_how_to_get_either(tmp_path):
    proc = _pick("", tmp_path / "none.tar.gz", tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cifar-10-python.tar.gz" in lines[0] and "CIFAR10_JPEG=" in lines[0]
