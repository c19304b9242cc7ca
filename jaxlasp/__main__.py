"""``python -m jaxlasp``: the same as the ``jaxlasp`` command (see ``jaxlasp.cli``)."""
import sys

from jaxlasp.cli import main

if __name__ == "__main__":
    sys.exit(main())
