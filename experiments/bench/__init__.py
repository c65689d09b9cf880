"""Micro- and network benchmarks: layers against the fastest dense conv, peers, whole networks, a GPU suite."""
