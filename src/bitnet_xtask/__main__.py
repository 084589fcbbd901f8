"""`python -m bitnet_xtask` is the `xtask` command."""

import sys

from .cli import main

sys.exit(main())
