"""``billq api``: the HTTP API for applications (one-off charges, jobs, an account's charges)."""
