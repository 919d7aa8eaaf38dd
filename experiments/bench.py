"""gdjax vs PyTorch on the same machine: ``gdjax bench`` from a checkout (see gdjax/bench.py)."""

import sys

from gdjax.bench import main

if __name__ == "__main__":
    main(sys.argv[1:])
