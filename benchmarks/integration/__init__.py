"""Batch integration with scib-metrics: MixSCVI against SCVI, SysVI and Harmony."""
