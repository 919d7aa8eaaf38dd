"""One jitted optimizer update, gdjax vs optax (``python -m gdjax.bench_optim``), from a checkout
(the code is gdjax/bench_optim.py)."""

import sys

from gdjax.bench_optim import main

if __name__ == "__main__":
    main(sys.argv[1:])
