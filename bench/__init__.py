"""billq's benchmark: ``python -m bench`` (see bench/README.md).

Measures the distributor, the end-to-end pipeline and a bare aio-pika + asyncpg floor on
the same machine in the same run, checks that every account was charged exactly once after
every measurement, prints a table and writes ``bench/results/latest.json`` and a chart.
"""
