"""The billq distributor: find due accounts, create their jobs, publish them."""
