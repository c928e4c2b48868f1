"""Snapshot metadata on disk: one XML file per snapshot, atomic writes, per-domain locks."""

from qsnap.store.folder import KEEP, DomainFolder
from qsnap.store.statedir import StateDir, resolve_state_dir

__all__ = ["KEEP", "DomainFolder", "StateDir", "resolve_state_dir"]
