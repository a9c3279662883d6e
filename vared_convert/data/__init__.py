"""Video data: dataset layouts, PyAV clip decoding, clip sampling, transforms, loader, checks, synthetic data."""
