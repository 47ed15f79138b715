"""The labeling project's own git + DVC repository: the workspace folder itself.

Retrains commit data versions, params and metrics. They commit into the *workspace*, a
repository of its own, never into the code repository a developer has checked out (the
code repo ignores `workspace/`). On first use the workspace gets `git init` + `dvc init`:

    workspace/
      data/            images, manifest.jsonl, labels.jsonl   -> tracked by data.dvc
      data.dvc         the data version (md5 of the data folder)
      dvc.yaml         the pipeline, copied from the code repo on every retrain
      dvc.lock         what the last `dvc repro` ran, with every input's and output's md5
      params.yaml      the knobs this round trained with
      metrics/ plots/  small JSON/CSV, kept in git (`dvc metrics diff`, `dvc plots diff`)
      round.json       the last round: data version, params hash, model version, gate decision
      pipeline/        stage outputs (DVC cache; git-ignored)
      models/ labelstudio/ prefect/ backend/ exports/ cache/ scratch/ reports/ incoming/ .env   git-ignored

Tools run as subprocesses (`git`, and the `dvc` next to this Python) with DVC analytics off
and this environment's bin folder first on PATH, so the `python` of dvc.yaml's commands is
this one, and the code root of this cxrkit first on PYTHONPATH, so the stages run this code.
Git gets a local identity, so a machine without a global one works.

The DVC remote is $CXR_DVC_REMOTE_URL (S3 in docker-compose, with $CXR_DVC_ENDPOINT_URL for
MinIO; credentials stay in the AWS_* environment, never in the config), else a folder next
to the workspace: `<workspace>/../dvc-remote`.
"""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import yaml

from cxrkit.core.atomic import write_atomic
from cxrkit.core.checkout import pythonpath
from cxrkit.labelstudio.tasks import HEATMAP_DIR

REMOTE_NAME = "storage"
REMOTE_ENV = "CXR_DVC_REMOTE_URL"
ENDPOINT_ENV = "CXR_DVC_ENDPOINT_URL"
CACHE_TYPE = "hardlink,copy"  # DVC cache.type: see init
GIT_NAME = "cxrkit retrain"
GIT_EMAIL = "retrain@cxrkit.invalid"
DATA_DVC = "data.dvc"

# What the workspace keeps out of git: secrets, servers' state, the registry (its models are
# DVC outputs of the pipeline already), scratch space, caches. DVC adds its own outputs.
GITIGNORE = """\
# written by cxrkit.pipeline.project_repo: the workspace is a git + DVC repository of its own
/.env
/.env.lock
/labelstudio/
/prefect/
/backend/
/stack/
/models/
/exports/
/cache/
/scratch/
/reports/
/incoming/
/.writer.lock
"""


# What `dvc add data` (the data version) leaves out: the heatmap overlays the select flow writes
# for Label Studio's panel (flows/select.py). They follow the serving model and the queue, not the
# labels: counted, every select round would make a new data version and the next retrain would
# train again on the same labels.
DVCIGNORE_LINES = ("# derived pictures shown in Label Studio, never data (flows/select.py)", f"/data/{HEATMAP_DIR}/")


class ProjectRepoError(RuntimeError):
    """A git or DVC command failed; the message names the command and its output's tail."""


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The stages import the cxrkit this process runs, not whichever checkout the environment's
    # editable install points at (one cached environment serves several clones).
    env["PYTHONPATH"] = pythonpath(env.get("PYTHONPATH"))
    return env


def dvc_executable() -> str:
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else "dvc"


def run(root: Path, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in the repo; ProjectRepoError with its output on failure (when check)."""
    proc = subprocess.run(args, cwd=root, env=tool_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise ProjectRepoError(f"`{' '.join(args)}` in {root} failed (exit {proc.returncode}): {tail}")
    return proc


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(root, ["git", *args], check=check)


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(root, [dvc_executable(), *args], check=check)


def default_remote(root: Path) -> str:
    return os.environ.get(REMOTE_ENV) or str(Path(root).resolve().parent / "dvc-remote")


def init(root: str | os.PathLike, remote: str | None = None) -> Path:
    """Make `root` a git + DVC repository (idempotent) and point its default remote at `remote`.

    Also clears what a killed run can leave behind: git's index.lock. Call it only while
    holding the workspace's writer lock (Workspace.writer_lock), when no other git runs here."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / ".git").is_dir():
        git(root, "init", "--quiet", "--initial-branch", "main")
    (root / ".git" / "index.lock").unlink(missing_ok=True)
    for key, value in (("user.name", GIT_NAME), ("user.email", GIT_EMAIL), ("commit.gpgsign", "false")):
        git(root, "config", key, value)
    ignore = root / ".gitignore"
    if not ignore.exists():
        ignore.write_text(GITIGNORE)
    if not (root / ".dvc").is_dir():
        dvc(root, "init", "--quiet")
        dvc(root, "config", "core.analytics", "false")
        dvc(root, "config", "core.check_update", "false")
    if dvc_setting(root, "cache", "type") != CACHE_TYPE:
        # Hard links between the workspace and DVC's cache: one copy of every image on disk, not
        # two (the default, reflink then copy, copies on ext4, which has no reflinks); copy where
        # the cache is on another file system. Tracked files become read-only links into the
        # cache: the workbench replaces them (core.atomic), and core.atomic.own_copy breaks the
        # link of a file it appends to. Measured in BENCHMARKS.md ("DVC cache link type").
        dvc(root, "config", "cache.type", CACHE_TYPE)
    # Each dvc call costs a second or two of start-up: change the remote only when it differs.
    url, endpoint = remote or default_remote(root), os.environ.get(ENDPOINT_ENV)
    if remote_settings(root) != (url, endpoint):
        dvc(root, "remote", "add", "--default", "--force", REMOTE_NAME, url)
        if endpoint:
            dvc(root, "remote", "modify", REMOTE_NAME, "endpointurl", endpoint)
    keep_out_of_data_version(root)
    commit(root, "workspace: git + DVC repository", [".gitignore", ".dvc/config", ".dvcignore"])
    return root


def keep_out_of_data_version(root: str | os.PathLike) -> None:
    """DVCIGNORE_LINES in the workspace's .dvcignore (written by `dvc init`), added once."""
    path = Path(root) / ".dvcignore"
    text = path.read_text() if path.is_file() else ""
    if DVCIGNORE_LINES[-1] not in text.splitlines():
        write_atomic(path, text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(DVCIGNORE_LINES) + "\n")


def dvc_setting(root: Path, section: str, key: str) -> str | None:
    """One setting of .dvc/config (read without starting dvc), None when unset."""
    config = configparser.ConfigParser()
    config.read(Path(root) / ".dvc" / "config")
    value = config.get(section, key, fallback=None)
    return None if value is None else value.strip('"')  # DVC quotes a value with a comma


def remote_settings(root: Path) -> tuple[str | None, str | None]:
    """(url, endpointurl) of the default remote as .dvc/config has them (read without starting dvc)."""
    config = configparser.ConfigParser()
    config.read(Path(root) / ".dvc" / "config")
    section = f"'remote \"{REMOTE_NAME}\"'"  # DVC writes the section name quoted: ['remote "storage"']
    if config.get("core", "remote", fallback=None) != REMOTE_NAME or section not in config:
        return None, None
    return config[section].get("url"), config[section].get("endpointurl")


def commit(root: Path, message: str, paths: list[str]) -> str | None:
    """Stage `paths` (those that exist) and commit; the new commit's sha, or None when nothing changed."""
    present = [p for p in paths if (Path(root) / p).exists()]
    if present:
        git(root, "add", "--all", "--", *present)
    if git(root, "diff", "--cached", "--quiet", check=False).returncode == 0:
        return None
    git(root, "commit", "--quiet", "--message", message)
    return head(root)


def head(root: Path) -> str | None:
    proc = git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False)
    return proc.stdout.strip() or None


def tag(root: Path, name: str, message: str) -> None:
    """Tag HEAD `name` (annotated); an existing tag of that name is left as it is."""
    if git(root, "rev-parse", "--verify", "--quiet", f"refs/tags/{name}", check=False).returncode != 0:
        git(root, "tag", "--annotate", name, "--message", message)


def data_version(root: Path) -> str | None:
    """The md5 that data.dvc records for the data folder (e.g. '3f2a...e1.dir'), or None before the first `dvc add`."""
    path = Path(root) / DATA_DVC
    if not path.is_file():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None
