"""Where this code lives: the folder that holds the cxrkit package and, beside it, the files it
reads as defaults (label_config.xml, params.yaml, dvc.yaml, requirements.lock) and ml_backend/."""
from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parents[2]
