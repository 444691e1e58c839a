"""Measuring models: the toy-birds attribute probe, FID/KID and memorisation analysis."""
