"""Panels, the bone-map list and the status-bar item."""
