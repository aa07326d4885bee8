"""Serving: the bridge from images to the gallery store (enrol, verify, identify in chunks)."""
