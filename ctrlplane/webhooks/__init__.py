"""Signed webhooks: endpoints a tenant registers, and deliveries of its events to them (see ``delivery.py``)."""
