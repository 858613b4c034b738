"""Micro-benchmarks: one part of rlvr at a time, and the whole step against TRL, as ratios in one run."""
