"""Atlas-scale study (issue 34): an atlas made from real cells, trained from disk and memory.

``make_data`` writes the atlas (h5ad and TileDB-SOMA) outside the repository; ``measure``
trains SCVI and MixSCVI from each store and reports peak memory, throughput and the held-out
likelihood of models trained from disk against in memory.
"""
