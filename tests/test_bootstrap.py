"""scripts/bootstrap.sh: two clones sharing one cached environment each run their own code.

The venvs are cached outside the clone, keyed by the lock files, so a developer's checkout and a
CI clone of the same lock share one. Every command typed in a clone (`cxr`, and what it starts:
gunicorn, dvc's stages, Prefect's runner) must import that clone's code, whichever clone
bootstrapped last.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def copy_checkout(dest: Path) -> Path:
    """The repository's files as a clone has them (tracked, plus new files not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
    return dest


def run(args, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_two_clones_each_run_their_own_code(tmp_path):
    clones = {name: copy_checkout(tmp_path / name) for name in ("a", "b")}
    for name, clone in clones.items():
        (clone / "cxrkit" / "_which_checkout.py").write_text(f"NAME = {name!r}\n")
    for clone in clones.values():  # b bootstraps last, over the same cached environment
        run(["bash", "scripts/bootstrap.sh"], cwd=clone)

    probe = ("import cxrkit, flows, ml_backend; from cxrkit.core.checkout import CODE_ROOT; "
             "from cxrkit._which_checkout import NAME; "
             "print(NAME, cxrkit.__file__, flows.__file__, ml_backend.__file__, CODE_ROOT)")
    for name, clone in clones.items():
        venv_bin = clone / ".venv" / "bin"
        out = run([str(venv_bin / "python"), "-c", probe], cwd=tmp_path).split()
        assert out[0] == name
        assert all(Path(p).resolve().is_relative_to(clone.resolve()) for p in out[1:]), out
        # The commands the workbench starts run this clone's python, so they import this clone.
        for command in ("gunicorn", "dvc", "prefect", "pytest"):
            first_line = (venv_bin / command).read_text().splitlines()[0]
            assert first_line == f"#!{venv_bin / 'python'}", (command, first_line)
        assert "Chest X-ray active-learning workbench" in run([str(venv_bin / "cxr"), "--help"], cwd=tmp_path)

    # `cxr` as a user types it, with worker processes (started by forkserver, which imports the
    # `cxr` script itself in each worker).
    out = tmp_path / "study"
    run([str(clones["a"] / ".venv" / "bin" / "cxr"), "synth", str(out), "--n", "4", "--size", "128", "--workers", "2"],
        cwd=tmp_path)
    assert len(list(out.glob("*.dcm"))) == 4
