"""billq."""
