"""The kubernetes backend (`LAB_BACKEND=kubernetes`): the labs on a real cluster with Istio.

Import `lablib.kube.backend.KubernetesBackend` (or call `lablib.connect("kubernetes")`); this
package itself imports nothing heavy, so `import lablib` never loads the kubernetes client.
"""
