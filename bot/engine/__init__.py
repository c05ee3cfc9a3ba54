"""Synchronous model code that knows nothing of Discord."""
