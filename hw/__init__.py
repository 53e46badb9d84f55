"""Amaranth gateware of the VELCRO accelerator."""
