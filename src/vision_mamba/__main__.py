"""``python -m vision_mamba``: the ``vision-mamba`` command."""
import sys

from .cli import main

sys.exit(main())
