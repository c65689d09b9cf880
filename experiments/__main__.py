"""Lists the experiment commands: ``python -m experiments``."""

from experiments.cli import list_commands

if __name__ == "__main__":
  print(list_commands())
