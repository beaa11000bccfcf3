"""Governance: change requests, reviews, diffs, the mapping test bench, ownership checks, config as code."""
