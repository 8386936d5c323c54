"""The local backend: a real Envoy mesh on 127.0.0.1 run by the meshd daemon."""
