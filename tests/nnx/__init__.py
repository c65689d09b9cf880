"""Tests of efficonv.nnx."""
