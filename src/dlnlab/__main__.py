"""``python -m dlnlab``: the ``dlnlab`` command."""

from .cli import _console_script

if __name__ == "__main__":
    _console_script()
