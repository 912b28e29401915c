"""geodns."""
