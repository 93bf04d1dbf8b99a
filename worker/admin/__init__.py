"""Operator tools that act on a group from outside a worker: groups, trim, prune, dead letters."""
