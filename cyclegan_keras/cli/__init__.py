"""The command-line tools, one module each, with `main(argv=None) -> int`.

Installed as console scripts (`cyclegan-train`, `cyclegan-translate`,
`cyclegan-export`); the top-level `train.py`, `translate.py` and `export.py`
of a checkout are shims that call the same `main`. Each module imports
TensorFlow only after its arguments are parsed, so `--help` is immediate.
"""
