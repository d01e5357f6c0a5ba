"""Label maps from pretrained classes to downstream datasets (one JSON file each), read by stunet.labels."""
