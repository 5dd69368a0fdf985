"""Try a model in the browser: `python demo.py --help`.

The code is `cyclegan_keras/cli/demo.py`; `pip install .[demo]` installs it as
`cyclegan-demo`.
"""

import sys

from cyclegan_keras.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
