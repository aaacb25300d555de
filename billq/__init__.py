"""billq: the command that composes the distributor, the worker and the sandbox."""
