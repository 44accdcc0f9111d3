"""The gateway's routes, one module per concern: jobs, results, events, system (health, stats)."""
