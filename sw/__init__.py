"""Compression, export, golden model, host runtime and command line of velcro."""
