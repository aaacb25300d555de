"""The web dashboard: billing runs, money, dead letters, jobs and workers in a browser."""
