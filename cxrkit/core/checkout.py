"""Where this code lives: the folder that holds the cxrkit package and, beside it, the files it
reads as defaults (label_config.xml, params.yaml, dvc.yaml, requirements.lock) and ml_backend/."""
import os
from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parents[2]


def pythonpath(existing: str | None) -> str:
    """PYTHONPATH with this checkout first, so a process started from here imports this code,
    whatever the environment's site-packages hold (one cached venv serves several clones)."""
    return os.pathsep.join(filter(None, [str(CODE_ROOT), existing or ""]))
