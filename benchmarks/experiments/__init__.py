"""Experiments: what learning does under each method and setting, with intervals."""
