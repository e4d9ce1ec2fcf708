"""`python -m dmguard`: the same as the `dmguard` console script."""

import sys

from dmguard import main

sys.exit(main())
