"""Policy helpers that need the outside world through a seam: DNS (``dns.py``) for now;
SPF, DKIM and DMARC evaluation will sit beside it and use the same :class:`Resolver`."""
