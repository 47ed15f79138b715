"""Scores and pictures of models: the RSNA score, mAP, AUROC, confusion matrices (metrics), the
edits between two labelings of an image (effort) and their plots. Pure functions over arrays and
boxes; imports cxrkit.core only."""
