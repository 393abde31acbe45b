"""ctrlplane: a multi-tenant PaaS control plane."""

__version__ = "0.1.0"
