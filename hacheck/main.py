"""The ``hacheck`` daemon command (being built: issue 3)."""

import sys


def main(argv=None) -> int:
    sys.stderr.write("hacheck: the daemon is not built yet\n")
    return 1
