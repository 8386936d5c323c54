"""Loading, validating and analysing Kubernetes and Istio manifests."""
