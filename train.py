"""Train a CycleGAN: `python train.py --help`.

The code is `cyclegan_keras/cli/train.py`; `pip install .` installs it as
`cyclegan-train`.
"""

import sys

from cyclegan_keras.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
