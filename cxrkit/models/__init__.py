"""Models of the workbench: the box detector (`detector`); the subtype classifier later.

Plain functions with explicit arguments (torchvision references style); the knobs
come from `params.yaml` (`load_params()["detector"]`).
"""
from cxrkit.params import load_params

__all__ = ["load_params"]
