"""pois."""
