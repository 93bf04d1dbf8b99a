"""`python -m worker` is the `syncworker` command."""

import sys

from worker.cli import main

sys.exit(main())
