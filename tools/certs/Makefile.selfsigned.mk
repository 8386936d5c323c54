# Istio's "Plug in CA Certificates" task, as its tools/certs/Makefile.selfsigned.mk runs it:
#
#   mkdir -p certs && cd certs
#   make -f ../tools/certs/Makefile.selfsigned.mk root-ca         # root-cert.pem, root-key.pem
#   make -f ../tools/certs/Makefile.selfsigned.mk cluster1-cacerts
#       # cluster1/ca-cert.pem ca-key.pem cert-chain.pem root-cert.pem: the cacerts Secret
#
# Written for the lab kit: the same targets and files, made by lablib.certs_make.

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

.PHONY: help root-ca clean
.PRECIOUS: %/ca-cert.pem %/ca-key.pem %/cert-chain.pem %/root-cert.pem

help:
	@echo "make -f $(lastword $(MAKEFILE_LIST)) root-ca       a root CA: root-cert.pem, root-key.pem"
	@echo "make -f $(lastword $(MAKEFILE_LIST)) NAME-cacerts  an intermediate CA for istiod in NAME/"
	@echo "make -f $(lastword $(MAKEFILE_LIST)) clean         remove what these made"

root-ca: root-cert.pem

root-cert.pem root-key.pem &:
	@echo "generating root-key.pem and root-cert.pem"
	@$(CERTS) root-ca .

%-cacerts: %/ca-cert.pem %/ca-key.pem %/cert-chain.pem %/root-cert.pem
	@echo "cacerts for $* in $*/"

%/ca-cert.pem %/ca-key.pem %/cert-chain.pem %/root-cert.pem: root-cert.pem root-key.pem
	@echo "generating $*/ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem"
	@$(CERTS) cacerts . $* --days $(INTERMEDIATE_DAYS)

clean:
	rm -rf root-cert.pem root-key.pem $(patsubst %/ca-cert.pem,%,$(wildcard */ca-cert.pem))
