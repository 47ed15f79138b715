"""What every part stands on: the label vocabulary (labels), the manifest record, a workspace's
paths, secrets and writer lock, params files, atomic writes, file hashes, a file's import
statements, the offline switches.
Imports nothing else of cxrkit."""
