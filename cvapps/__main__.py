"""``python -m cvapps`` (and ``torchrun -m cvapps``) runs the CLI."""

import sys

from cvapps.cli import main

sys.exit(main())
