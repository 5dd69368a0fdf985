"""Translate images with a trained CycleGAN: `python translate.py --help`.

The code is `cyclegan_keras/cli/translate.py`; `pip install .` installs it as
`cyclegan-translate`.
"""

import sys

from cyclegan_keras.cli.translate import main

if __name__ == "__main__":
    sys.exit(main())
