"""hacheck: a health-check proxy that sits between HAProxy and the services it balances."""

__version__ = "1.1.0"
