"""The control plane: Istio and Kubernetes config in, Envoy xDS out (see docs/design.md)."""
