"""Log drains: every line an instance writes, shipped labelled to a tenant's receiver (see ``shipper.py``)."""
