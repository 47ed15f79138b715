"""`cxr`: the one front door for users (cxrkit.cli.main); each subcommand is a thin wrapper over a
library call. Subcommand groups live beside it: backend.py, flows.py, al.py; common.py holds what
they share, so no module here imports the package that imports it."""
from cxrkit.cli.main import app

__all__ = ["app"]
