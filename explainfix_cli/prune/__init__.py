"""Pruning: spatial-filter criteria and ranking, zeroing, the masked equivalent, the self-check, the pipeline."""
