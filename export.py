"""Export a trained generator for TF Serving and LiteRT: `python export.py --help`.

The code is `cyclegan_keras/cli/export.py`; `pip install .` installs it as
`cyclegan-export`.
"""

import sys

from cyclegan_keras.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
