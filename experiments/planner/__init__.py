"""The cost model behind ``implementation="auto"``: fitting its rates to timings, and sweeping its decisions."""
