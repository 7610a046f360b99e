"""The converged single-cell protocol (held-out likelihood, clustering) and its controls."""
