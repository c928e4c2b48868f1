"""``qsnap``: a virsh-style command line over :class:`qsnap.Engine` (see :mod:`qsnap.cli.app`)."""

from qsnap.cli.app import main

__all__ = ["main"]
