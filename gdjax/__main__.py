"""``python -m gdjax``: the ``gdjax`` command, with the same flags and exit statuses."""

from gdjax.cli import entry_point

if __name__ == "__main__":
    entry_point()
