"""``jina-clip eval run --model <folder|hub id> --suite paper|quick ...`` (see evaluation/cli.py)."""

import sys

from .cli import main

sys.exit(main())
