"""A new workspace's Label Studio database, copied from a migrated empty one instead of migrated anew.

Label Studio's first start on SQLite applies its Django migrations (396 of them): a start that
migrated took 26.5 s on the dev VM, one from a copy of the migrated database 3.4 s (medians,
BENCHMARKS.md "Label Studio's first start in a new workspace"). The migrated, empty
database (tables and migration records only: no user, no token, no secret; the secret key and the
admin are made by the start, per workspace) is the same for every workspace served by one Label
Studio install. So it is made once per install, kept in the cache beside the virtual environments
(`$CXR_CACHE_DIR`, default ~/.cache/cxrkit), named by the install's path and Label Studio version,
and copied into a new workspace's data folder before its first start. The start then finds nothing
to migrate and creates the workspace's admin and token as before.

Only Label Studio's default database is copied: SQLite in its data folder. A server on Postgres
(DJANGO_DB, the scale-out stack) or on a database file named by DATABASE_NAME migrates as before.
Wherever the copy cannot be made (an install without a version record, a read-only cache, a
migration that fails), the start migrates as before; the reason is printed.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cxrkit.core.atomic import write_atomic

DATABASE_FILE = "label_studio.sqlite3"  # Label Studio's default DATABASE_NAME in its data folder

# What `label-studio start` does before serving (label_studio.server: _setup_env, then migrate), and no more.
MIGRATE = ("import os, sys, label_studio; sys.path.insert(0, os.path.dirname(label_studio.__file__)); "
           "os.environ['DJANGO_SETTINGS_MODULE'] = 'label_studio.core.settings.label_studio'; "
           "import django; django.setup(); from django.core.management import call_command; "
           "call_command('migrate', '--no-color', verbosity=0)")


def _setting(name: str, env: dict) -> str | None:
    """A Label Studio setting as its get_env reads it: LABEL_STUDIO_<name>, HEARTEX_<name>, then <name>."""
    for key in (f"LABEL_STUDIO_{name}", f"HEARTEX_{name}", name):
        if env.get(key) is not None:
            return env[key]
    return None


def uses_default_sqlite(env: dict) -> bool:
    """Whether a server started with `env` keeps its database in DATABASE_FILE of its data folder."""
    return (_setting("DJANGO_DB", env) or "sqlite") == "sqlite" and not _setting("DATABASE_NAME", env)


def cache_dir() -> Path:
    return Path(os.environ.get("CXR_CACHE_DIR") or Path.home() / ".cache" / "cxrkit")


def template_path(binary: Path) -> Path | None:
    """Where the migrated empty database of the install that `binary` (its label-studio command)
    belongs to is kept; None for an install whose Label Studio version cannot be read."""
    venv = binary.resolve().parent.parent
    records = sorted(venv.glob("lib/python*/site-packages/label_studio-*.dist-info"))
    if not records:
        return None
    key = hashlib.sha256(f"{venv}\n{records[-1].name}".encode()).hexdigest()[:16]
    return cache_dir() / f"labelstudio-db-{key}.sqlite3"


def migrated_template(binary: Path, env: dict, timeout: float) -> Path:
    """The install's migrated empty database, made now when missing (in a scratch data folder, then
    written into place whole: a killed run leaves no half database, and two at once each write a
    complete one). `env`: the server's environment, without the workspace's credentials."""
    template = template_path(binary)
    if template is None:
        raise OSError(f"no label_studio-*.dist-info beside {binary}: cannot tell which Label Studio this is")
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cxr-ls-migrate-") as scratch:
        run_env = {**env, "LABEL_STUDIO_BASE_DATA_DIR": scratch}
        done = subprocess.run([str(binary.parent / "python"), "-c", MIGRATE], env=run_env, cwd=scratch,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise OSError(f"Label Studio's migrations failed (exit {done.returncode}): "
                          f"{(done.stderr or done.stdout).strip()[-800:]}")
        write_atomic(template, (Path(scratch) / DATABASE_FILE).read_bytes())  # no user, no token: 0644
    return template


def seed_database(data_dir: Path, binary: Path, env: dict, timeout: float) -> bool:
    """Copy the install's migrated empty database into `data_dir` when the server will use its default
    SQLite database there and none exists yet. True when copied; False when not needed or not possible
    (the reason printed: the start then migrates as before)."""
    database = data_dir / DATABASE_FILE
    if not uses_default_sqlite(env) or database.exists():
        return False
    try:
        template = migrated_template(binary, env, timeout)
        # Whole or not at all (a half copy would read as a database); 0600: it will hold the admin's
        # token and every annotation.
        write_atomic(database, template.read_bytes(), mode=0o600)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"Label Studio: migrating this workspace's database itself (no migrated copy: {exc})", file=sys.stderr)
        return False
    return True
