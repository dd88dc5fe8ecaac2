"""`python -m services.scorer`: serve until SIGTERM."""

import sys

from services.scorer.cli import main

sys.exit(main())
