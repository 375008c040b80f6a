"""Storage: the contract (api.py) and its backends."""
