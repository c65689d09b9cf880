"""What every experiment shares: the config, the machine description, one timing method, the results schema."""
