"""Code shared by the billq distributor and worker: config, domain, adapters."""
