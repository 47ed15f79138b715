"""Models of the workbench: the box detector (`detector`), the subtype classifier
(`classifier`), both together (`predictor`) and what it shows (`preannotation`), pseudo-labels
and the registry.

Plain functions with explicit arguments (torchvision references style); the knobs
come from `params.yaml` (`load_params()["detector"]`).
"""
from cxrkit.core.params import load_params

__all__ = ["load_params"]
