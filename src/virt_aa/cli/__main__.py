"""``python -m virt_aa.cli``: the same as the ``virt-aa`` command."""

import sys

from virt_aa.cli import main

sys.exit(main())
