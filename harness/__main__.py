"""`python -P -m harness COMMAND ...` (what the recipes run): the workflow CLI."""

import sys

from harness.cli import main

sys.exit(main())
