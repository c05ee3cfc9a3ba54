"""Discord features, one module each."""
