"""scripts/dataset.sh: which CIFAR-10 `make demo`, `make reproduce` and `make gpu-check` train on;
scripts/gpu-check.sh where torch sees no GPU."""

import subprocess

from .conftest import REPO

NO_NETWORK = "false"  # as the python that checks the network: it fails, as without one


def _pick(data, jpeg, tmp_path):
    return subprocess.run([str(REPO / "scripts" / "dataset.sh"), data, str(jpeg), NO_NETWORK],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})


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
    assert proc.returncode == 0 and proc.stdout.split() == ["data=cifar10_jpeg",
                                                            f"data.path={jpeg}"]
    assert "no network" in proc.stderr


def test_with_neither_one_message_says_how_to_get_either(tmp_path):
    proc = _pick("", tmp_path / "none.tar.gz", tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cifar-10-python.tar.gz" in lines[0] and "CIFAR10_JPEG=" in lines[0]


def _gpu_check(*args, tmp_path):
    """scripts/gpu-check.sh with a python that says torch sees no CUDA GPU (`false` fails the
    check)."""
    return subprocess.run([str(REPO / "scripts" / "gpu-check.sh"), *args], cwd=tmp_path,
                          capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PY": "false"})


def test_gpu_check_without_a_gpu_runs_nothing_and_says_why(tmp_path):
    proc = _gpu_check("out", "data=synthetic", tmp_path=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "gpu-check: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
        "nothing was run"]
    assert ([p.name for p in tmp_path.iterdir()] == ["out"]
            and not list((tmp_path / "out").iterdir()))


def test_gpu_check_without_a_folder_says_how_to_call_it(tmp_path):
    proc = _gpu_check(tmp_path=tmp_path)
    assert (proc.returncode != 0 and "usage: scripts/gpu-check.sh DEST" in proc.stderr
            and not list(tmp_path.iterdir()))
