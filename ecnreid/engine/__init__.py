"""Training engine: the two-domain loop, its hooks, and the data it trains on."""
