"""The node agent (``ctrlplane agent``): see ``ctrlplane.agent.main``."""
