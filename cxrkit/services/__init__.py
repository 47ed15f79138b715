"""The servers a workspace runs, started detached and found again: Label Studio, the ML backend,
Prefect's server and runner (one start/wait/stop helper: process.py), and `cxr status`.
Imports every package below it (core to pipeline), never flows, ml_backend or the CLI."""
