"""The training loop (loop.py), its drivers, the budget controller, evaluation, the oracle and the run's state."""
