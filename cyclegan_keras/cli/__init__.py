"""The command-line tools, one module each with `main(argv=None) -> int`: console scripts and top-level shims.

Each imports TensorFlow only after parsing its arguments.
"""

import functools
import sys

from cyclegan_keras import files


def full_disk_exits_1(main):
    """Wraps a tool's `main`: a full disk (`files.disk_full`, TensorFlow's too) is one line and exit status 1."""

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
