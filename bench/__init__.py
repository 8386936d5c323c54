"""Benchmarks of the local mesh against bare Envoy and bare Python baselines (`python -m bench`)."""
