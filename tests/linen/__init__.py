"""Tests of efficonv.linen."""
