"""`python -m genret ...`: the same as the `genret` console script."""

import sys

from genret.cli import main

if __name__ == "__main__":
    sys.exit(main())
