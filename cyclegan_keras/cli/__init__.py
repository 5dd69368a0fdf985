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


def with_batch_norm(cli, generator, mode):
    """`generator` in `--batch-norm mode`; a generator without batch norm given `image` ends the command."""
    if mode == "running":
        return generator
    from cyclegan_keras import networks

    try:
        return networks.with_image_statistics(generator)
    except ValueError as error:
        cli.error(f"argument --batch-norm: {error}")
