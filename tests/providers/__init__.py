"""Provider tests: one conformance suite (``conformance.py``) that every provider's test class inherits."""
