"""The sandbox payment gateway: a separate test service speaking a subset of Stripe's API.

Test and development tooling, not part of the product's library layer: ``shared`` never
imports it.
"""
