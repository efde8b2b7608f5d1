"""``python -m medseg``: the same command line as the ``medseg`` script (:mod:`medseg.cli`)."""
import sys

from medseg.cli import main

sys.exit(main())
