"""Prefect flows of the workbench (run with `python -m flows.<name>`)."""
