"""What experiments/ commits is a record anyone can read and re-plot: no lock files, no empty
logs, no paths of the machine that produced it."""

import re
import subprocess

from .conftest import REPO

MACHINE_PATH = re.compile(r"(?<![\w.~])/(root|tmp|home|work|Users|private|scratch|mnt)/")


def _committed() -> list:
    """The files under experiments/ that git tracks or would add (not ignored)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                          "experiments"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / line for line in out.splitlines() if (REPO / line).is_file()]


def test_no_lock_files_and_no_empty_logs():
    files = _committed()
    assert files, "experiments/ holds no files"
    assert [f for f in files if f.name == ".lock"] == []
    assert [f for f in files if f.suffix == ".log" and f.stat().st_size == 0] == []


def test_no_absolute_machine_paths_in_records_and_notes():
    found = []
    for f in _committed():
        if f.suffix in (".json", ".jsonl", ".yaml", ".yml", ".md", ".csv", ".log", ".sh", ".py"):
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                if MACHINE_PATH.search(line):
                    found.append(f"{f.relative_to(REPO)}:{n}: {line.strip()[:120]}")
    assert found == []
