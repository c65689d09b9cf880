"""``python -m experiments.claims.verdicts``: see :mod:`experiments.claims.verdicts`."""

from experiments.claims.verdicts import main

if __name__ == "__main__":
  main()
