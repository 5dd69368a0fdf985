"""Score translations (FID, KID, PSNR/SSIM/MAE, label scores): `python evaluate.py --help`.

The code is `cyclegan_keras/cli/evaluate.py`; `pip install .` installs it as
`cyclegan-evaluate`.
"""

import sys

from cyclegan_keras.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
