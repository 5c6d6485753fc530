"""Evaluations: metrics, real photos, and the studies run on them."""
