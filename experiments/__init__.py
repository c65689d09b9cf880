"""Experiments built on efficonv: data, training and reporting (the library never imports this package)."""
