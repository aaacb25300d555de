"""The billq worker: consumes charge messages and charges each job exactly once."""
