"""Metrics of the method's claims: skin tone, background, reconstruction."""
