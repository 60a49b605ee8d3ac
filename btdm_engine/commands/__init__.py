"""Top-level commands that span several engine packages."""
