"""Epoch time and memory against SCVI, and scaling with the number of cells."""
