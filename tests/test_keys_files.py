"""`cutq keys` on disk (issue 8 items 1 and 7): key names cannot leave the key folder, and
every key file has its mode whatever the umask.  Real `python -m cli` processes, umask 022."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def cutq_keys(data: Path, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "keys", "--data", str(data), *args],
                          capture_output=True, text=True, env=ENV, timeout=60, check=False,
                          cwd=data.parent, preexec_fn=lambda: os.umask(umask))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree(root: Path) -> dict[str, int]:
    """Every path under root with its mode (files, folders and links alike)."""
    return {str(p.relative_to(root)): mode(p) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o277])
def test_key_files_are_private_whatever_the_umask(tmp_path: Path, umask: int):
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True, mode=0o755)
    os.chmod(data / "keys", 0o755)  # a folder left open by an older version is closed, too
    r = cutq_keys(data, "init", umask=umask)
    assert r.returncode == 0, r.stderr
    for name, role in (("alice", "client"), ("w-1.gpu_box", "worker"), ("root", "admin")):
        r = cutq_keys(data, "add", name, "--role", role, *(["--tenant", "A"] if role == "client" else []),
                      umask=umask)
        assert r.returncode == 0, r.stderr
    r = cutq_keys(data, "revoke", "root", umask=umask)  # rewrites the registry
    assert r.returncode == 0, r.stderr
    keys = data / "keys"
    want = {
        ".": 0o700, "certs": 0o700, "registry.json": 0o600,
        "broker.key_secret": 0o600, "broker.key": 0o644,
        **{f"certs/{n}.key_secret": 0o600 for n in ("alice", "w-1.gpu_box", "root")},
        **{f"certs/{n}.key": 0o644 for n in ("alice", "w-1.gpu_box", "root")},
    }
    got = {".": mode(keys), **tree(keys)}
    assert got == want  # and nothing else: no temporary file left behind


@pytest.mark.parametrize("name", ["../../x", "../../../x", "/tmp/abs", "a/b", "..", ".", ".hidden", "",
                                  "x" * 65, "new\nline", "nul\x01", "sp ace", "back\\slash", "é"])
def test_bad_key_names_are_refused_with_one_line_and_nothing_written(tmp_path: Path, name: str):
    data = tmp_path / "deep" / "data"
    data.mkdir(parents=True)
    assert cutq_keys(data, "init").returncode == 0
    before = tree(tmp_path)
    r = cutq_keys(data, "add", name, "--role", "worker")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "invalid key name" in r.stderr, r.stderr
    assert r.stdout == ""
    assert tree(tmp_path) == before
    assert not (tmp_path / "x.key_secret").exists() and not Path("/tmp/abs.key_secret").exists()


def test_a_bad_name_is_refused_before_anything_else(tmp_path: Path):
    """Even without broker keys (a second error), the name is what is reported; nothing is created."""
    data = tmp_path / "data"
    r = cutq_keys(data, "add", "../../x", "--role", "worker")
    assert r.returncode == 2 and "invalid key name" in r.stderr and r.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_longest_valid_key_name(tmp_path: Path):
    data = tmp_path / "data"
    assert cutq_keys(data, "init").returncode == 0
    name = "k" * 64
    r = cutq_keys(data, "add", name, "--role", "worker")
    assert r.returncode == 0, r.stderr
    assert mode(data / "keys" / "certs" / f"{name}.key_secret") == 0o600
