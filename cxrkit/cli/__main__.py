"""`python -m cxrkit.cli ...`: the same as `cxr ...`."""
from cxrkit.cli.main import app

app()
