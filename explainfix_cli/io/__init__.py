"""Inputs and outputs: checkpoints and their trust rules, the recipe, the safetensors codec, structural edits, output directories, calibration data."""
