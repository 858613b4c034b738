"""Profiles: where a step's time and memory go, how cost grows with the work, and the one GPU command."""
