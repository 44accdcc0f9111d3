"""`python -m cli ...` runs the `cutq` command."""

import sys

from cli.main import main

sys.exit(main())
