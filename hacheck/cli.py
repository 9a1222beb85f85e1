"""The operator tools: haup, hadown, hastatus, hashowdowned, halist, haupdown (being built: issue 2)."""

import sys


def haupdown(argv=None) -> int:
    sys.stderr.write("haupdown: not built yet\n")
    return 1


haup = hadown = hastatus = hashowdowned = halist = haupdown
