"""cocotb benches and the RTL simulation backend."""
