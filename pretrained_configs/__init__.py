"""Declarative configs of the released models (one JSON file each), read by stunet.weights.pretrained."""
