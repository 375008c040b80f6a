"""Administration: operations (service.py) and their command line (cli.py)."""
