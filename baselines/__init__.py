"""Baseline forecasters judged against MixMamba: PatchTST, iTransformer and DLinear."""
