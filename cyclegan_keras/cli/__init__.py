"""The command-line tools, one module each, with `main(argv=None) -> int`.

Installed as console scripts (`cyclegan-train`, `cyclegan-translate`,
`cyclegan-export`); the top-level `train.py`, `translate.py` and `export.py`
of a checkout are shims that call the same `main`. Each module imports
TensorFlow only after its arguments are parsed, so `--help` is immediate.
"""

import functools
import sys

from cyclegan_keras import files


def full_disk_exits_1(main):
    """Wraps a tool's `main`: a full disk anywhere ends it with one line and exit status 1, not a traceback.

    The writers remove what they had written (see `files.DiskFull`); an
    error that says the disk is full without passing through them (e.g.
    from TensorFlow) is reported the same way.
    """

    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        except Exception as error:
            full = files.disk_full(error)
            if full is None:
                raise
            print(f"error: {full}", file=sys.stderr)
            return 1

    return wrapped
