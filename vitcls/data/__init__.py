"""Image folders: scanning, splitting, decoding, the DataModule, synthetic demo data."""
