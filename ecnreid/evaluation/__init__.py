"""Evaluation: feature distances, the re-ID ranking protocol (CMC, mAP, mINP) and k-reciprocal re-ranking."""
