"""The claims under test: train and compare every scheme, compress a trained network, judge each claim."""
