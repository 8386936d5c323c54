# Settings shared by the kit's certificate makefiles, as Istio's tools/certs/common.mk holds
# them. The certificates come from the kit's own code (lablib.certs), not from openssl.

KIT_ROOT := $(realpath $(dir $(lastword $(MAKEFILE_LIST)))/../..)
# The kit's interpreter when its virtualenv exists, else python3 (which must import lablib).
PYTHON ?= $(firstword $(wildcard $(KIT_ROOT)/.venv/bin/python) python3)
CERTS := PYTHONPATH=$(KIT_ROOT)$(if $(PYTHONPATH),:$(PYTHONPATH)) $(PYTHON) -m lablib.certs_make

# How long an intermediate (istiod's signing CA) is valid, as in Istio's common.mk.
INTERMEDIATE_DAYS ?= 730
