"""Measuring: datasets and IR metrics, the rerank and end-to-end evaluations, and load on loopback."""
