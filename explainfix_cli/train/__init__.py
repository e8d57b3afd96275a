"""Recovering accuracy: fine-tuning and BatchNorm re-estimation."""
