"""Audits of what the bot draws: `python -m bot audit bias` (bias.py, classify.py, metrics.py, report.py)."""
