"""What a user reads after a run: comparison plots (plots.py) and the value model's report (value_report.py)."""
