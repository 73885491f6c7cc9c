"""`python -m jdlm ...`: the same command line as the `jdlm` script."""

import sys

from jdlm.cli import main

if __name__ == "__main__":
    sys.exit(main())
