"""`python -m services.stream`: the stream worker, as `fraudctl stream`."""

import sys

from services.stream.cli import main

sys.exit(main())
