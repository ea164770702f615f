"""kfwguard: a dynamic response daemon for Kubernetes nodes."""

__version__ = "0.1.0"
