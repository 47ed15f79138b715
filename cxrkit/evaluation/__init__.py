"""Scores and pictures of models: the RSNA score, mAP, AUROC, confusion matrices (metrics) and
their plots. Pure functions over arrays; imports cxrkit.core only."""
