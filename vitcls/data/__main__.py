"""`python -m vitcls.data check ROOT` (the `vitcls-data` command)."""

import sys

from vitcls.data.check import main

sys.exit(main())
