"""Istio's egress tasks typed into a shell, through the kubectl/istioctl shims, on one real
local mesh against its outside world: Accessing External Services (egress-control), Egress
TLS Origination, Egress Gateways and Egress Gateways with TLS Origination.

The command lines are the tasks' (sleep in the injected `default` namespace, `SOURCE_POD`),
and so are the outcomes checked. Where the local mesh differs by design the test says so:
the outside world answers HTTP/1.1 where the real sites answer HTTP/2, so status lines are
matched by their code.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator

import pytest
from test_shims_walkthrough import Shell

from lablib.local.client import LocalBackend
from lablib.local.state import StateDir
from lablib.shims import env as shim_env

pytestmark = pytest.mark.envoy
EXEC = 'kubectl exec "$SOURCE_POD" -c sleep -- '
POD = "export SOURCE_POD=$(kubectl get pod -l app=sleep -o jsonpath='{.items..metadata.name}'); "


def codes(headers: str) -> list[int]:
    """The status of each response in curl's `-D -`/`-I` output."""
    return [int(c) for c in re.findall(r"(?m)^HTTP/\S+ (\d{3})", headers)]


@pytest.fixture(scope="module")
def sh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shell]:
    state = tmp_path_factory.mktemp("shims-egress")
    work = tmp_path_factory.mktemp("learner")
    env = dict(os.environ, LAB_MESH=f"shims-egress-{os.getpid()}", LAB_STATE_DIR=str(state),
               LAB_MESH_OWNER=str(os.getpid()), XDG_CACHE_HOME=str(state / "cache"))
    env.pop("LAB_BACKEND", None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
        env["PATH"] = f"{shim_env.shim_dir()}{os.pathsep}{env['PATH']}"
    shell = Shell(env, work)
    try:
        shell.ok("istioctl install --set profile=demo -y")
        shell.ok("kubectl label namespace default istio-injection=enabled")
        shell.ok("kubectl apply -f samples/sleep/sleep.yaml")
        shell.ok("kubectl wait --for=condition=ready pod -l app=sleep --timeout=60s")
        yield shell
    finally:
        shell.run("istioctl uninstall --purge -y")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LAB_MESH", env["LAB_MESH"])
            patch.setenv("LAB_STATE_DIR", env["LAB_STATE_DIR"])
            left = LocalBackend.attach(StateDir())
            if left is not None:
                left.uninstall()


def run(sh: Shell, line: str, stdin: str = ""):
    return sh.run(POD + line, stdin)


HTTPBIN_EXT = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.org
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
"""
GOOGLE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: google
spec:
  hosts:
  - www.google.com
  ports:
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
  location: MESH_EXTERNAL
"""
HTTPBIN_TIMEOUT = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.org
  http:
  - timeout: 3s
    route:
      - destination:
          host: httpbin.org
        weight: 100
"""


def test_01_egress_control(sh: Shell) -> None:
    both = (f'{EXEC}curl -sSI https://www.google.com | grep  "HTTP/"; '
            f'{EXEC}curl -sI https://edition.cnn.com | grep "HTTP/"')
    assert codes(run(sh, both).out) == [200, 200]

    sh.ok("istioctl install --set profile=demo "
          "--set meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY -y")
    blocked = run(sh, f'{EXEC}curl -sI https://www.google.com | grep  "HTTP/"; '
                      f'{EXEC}curl -sI https://edition.cnn.com | grep "HTTP/"')
    assert codes(blocked.out) == []
    assert blocked.err.count("command terminated with exit code 35") == 2, blocked.err

    run(sh, "kubectl apply -f -", HTTPBIN_EXT)
    headers = run(sh, f"{EXEC}curl -sS http://httpbin.org/headers").out
    assert '"Host": "httpbin.org"' in headers and "X-Envoy-Peer-Metadata-Id" in headers

    run(sh, "kubectl apply -f -", GOOGLE)
    assert codes(run(sh, f'{EXEC}curl -sSI https://www.google.com | grep  "HTTP/"').out) == [200]

    run(sh, "kubectl apply -f -", HTTPBIN_TIMEOUT)
    started = time.monotonic()
    timed = run(sh, f'{EXEC}curl -o /dev/null -sS -w "%{{http_code}}\\n" '
                    "http://httpbin.org/delay/5")
    assert timed.out.strip() == "504" and time.monotonic() - started < 5

    for line in ("kubectl delete serviceentry httpbin-ext google",
                 "kubectl delete virtualservice httpbin-ext"):
        sh.ok(line)
    sh.ok("istioctl install --set profile=demo "
          "--set meshConfig.outboundTrafficPolicy.mode=ALLOW_ANY -y")


CNN = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: edition-cnn-com
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: https-port
    protocol: HTTPS
  resolution: DNS
"""
CNN_ORIGINATION = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: edition-cnn-com
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
    targetPort: 443
  - number: 443
    name: https-port
    protocol: HTTPS
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: edition-cnn-com
spec:
  host: edition.cnn.com
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 80
      tls:
        mode: SIMPLE # initiates HTTPS when accessing edition.cnn.com
"""
POLITICS = f"{EXEC}curl -sSL -o /dev/null -D - http://edition.cnn.com/politics"


def test_02_egress_tls_origination(sh: Shell) -> None:
    run(sh, "kubectl apply -f -", CNN)
    plain = run(sh, POLITICS).out
    assert codes(plain) == [301, 200] and "location: https://edition.cnn.com/politics" in plain
    run(sh, "kubectl apply -f -", CNN_ORIGINATION)
    assert codes(run(sh, POLITICS).out) == [200]
    https = run(sh, f"{EXEC}curl -sSL -o /dev/null -D - https://edition.cnn.com/politics").out
    assert codes(https) == [200]
    sh.ok("kubectl delete serviceentry edition-cnn-com")
    sh.ok("kubectl delete destinationrule edition-cnn-com")


EGRESS_GATEWAY_HTTP = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - edition.cnn.com
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
"""
EGRESS_VS_HTTP = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: PORT
      weight: 100
"""
CNN_GATEWAY_SE = CNN.replace("edition-cnn-com", "cnn").replace("https-port", "https")
EGRESS_GATEWAY_TLS = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 443
      name: tls
      protocol: TLS
    hosts:
    - edition.cnn.com
    tls:
      mode: PASSTHROUGH
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - mesh
  - istio-egressgateway
  tls:
  - match:
    - gateways:
      - mesh
      port: 443
      sniHosts:
      - edition.cnn.com
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 443
  - match:
    - gateways:
      - istio-egressgateway
      port: 443
      sniHosts:
      - edition.cnn.com
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 443
      weight: 100
"""


def gateway_requests(sh: Shell, port: int) -> int:
    """What the egress gateway's Envoy sent to edition.cnn.com's `port` (its own counter,
    read with pilot-agent as `istioctl`'s docs do)."""
    stats = sh.ok("kubectl exec -n istio-system deploy/istio-egressgateway -c istio-proxy -- "
                  "pilot-agent request GET stats")
    found = re.search(rf"cluster\.outbound\|{port}\|\|edition\.cnn\.com\.upstream_cx_total: "
                      rf"(\d+)", stats)
    return int(found.group(1)) if found else 0


def test_03_egress_gateway_http_then_https(sh: Shell) -> None:
    pods = sh.ok("kubectl get pod -l istio=egressgateway -n istio-system")
    assert "istio-egressgateway" in pods and "Running" in pods
    run(sh, "kubectl apply -f -", CNN_GATEWAY_SE)
    assert codes(run(sh, POLITICS).out) == [301, 200]
    run(sh, "kubectl apply -f -", EGRESS_GATEWAY_HTTP)
    run(sh, "kubectl apply -f -", EGRESS_VS_HTTP.replace("PORT", "80"))
    before = gateway_requests(sh, 80)
    assert codes(run(sh, POLITICS).out) == [301, 200]
    assert gateway_requests(sh, 80) > before  # the request left through the gateway
    # The task's own check: the gateway's access log (demo profile: /dev/stdout) has it.
    logged = sh.ok("kubectl logs -l istio=egressgateway -c istio-proxy -n istio-system | tail")
    assert re.search(r'"GET /politics HTTP/[\d.]+" 301 .*outbound\|80\|\|edition\.cnn\.com',
                     logged), logged
    prefixed = sh.ok("kubectl logs -l istio=egressgateway -c istio-proxy -n istio-system "
                     "--prefix --tail=1")
    assert re.fullmatch(r"\[pod/istio-egressgateway-[\w-]+/istio-proxy\] .+\n", prefixed), \
        prefixed
    sh.ok("kubectl delete gateway istio-egressgateway")
    sh.ok("kubectl delete virtualservice direct-cnn-through-egress-gateway")
    sh.ok("kubectl delete destinationrule egressgateway-for-cnn")

    run(sh, "kubectl apply -f -", EGRESS_GATEWAY_TLS)
    before = gateway_requests(sh, 443)
    https = run(sh, f"{EXEC}curl -sSL -o /dev/null -D - https://edition.cnn.com/politics").out
    assert codes(https) == [200]
    assert gateway_requests(sh, 443) > before
    for kind, name in (("gateway", "istio-egressgateway"),
                       ("virtualservice", "direct-cnn-through-egress-gateway"),
                       ("destinationrule", "egressgateway-for-cnn"), ("serviceentry", "cnn")):
        sh.ok(f"kubectl delete {kind} {name}")


ORIGINATE_AT_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: originate-tls-for-edition-cnn-com
spec:
  host: edition.cnn.com
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: SIMPLE # initiates HTTPS for connections to edition.cnn.com
"""


def test_04_egress_gateway_tls_origination(sh: Shell) -> None:
    run(sh, "kubectl apply -f -", CNN_GATEWAY_SE)
    run(sh, "kubectl apply -f -", EGRESS_GATEWAY_HTTP.replace("name: http\n",
                                                              "name: https-port-for-tls-"
                                                              "origination\n"))
    run(sh, "kubectl apply -f -", EGRESS_VS_HTTP.replace("PORT", "443"))
    run(sh, "kubectl apply -f -", ORIGINATE_AT_GATEWAY)
    before = gateway_requests(sh, 443)
    assert codes(run(sh, POLITICS).out) == [200]  # HTTPS from the gateway: no redirect
    assert gateway_requests(sh, 443) > before


NGINX_MTLS_CONF = """\
events {
}

http {
  log_format main '$remote_addr - $remote_user [$time_local]  $status '
  '"$request" $body_bytes_sent "$http_referer" '
  '"$http_user_agent" "$http_x_forwarded_for"';
  access_log /var/log/nginx/access.log main;
  error_log  /var/log/nginx/error.log;

  server {
    listen 443 ssl;

    root /usr/share/nginx/html;
    index index.html;

    server_name my-nginx.mesh-external.svc.cluster.local;
    ssl_certificate /etc/nginx-server-certs/tls.crt;
    ssl_certificate_key /etc/nginx-server-certs/tls.key;
    ssl_client_certificate /etc/nginx-ca-certs/example.com.crt;
    ssl_verify_client on;
  }
}
"""
MY_NGINX_MTLS = """\
apiVersion: v1
kind: Service
metadata:
  name: my-nginx
  namespace: mesh-external
  labels:
    run: my-nginx
spec:
  ports:
  - port: 443
    protocol: TCP
  selector:
    run: my-nginx
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: my-nginx
  namespace: mesh-external
spec:
  selector:
    matchLabels:
      run: my-nginx
  replicas: 1
  template:
    metadata:
      labels:
        run: my-nginx
    spec:
      containers:
      - name: my-nginx
        image: nginx
        ports:
        - containerPort: 443
        volumeMounts:
        - name: nginx-config
          mountPath: /etc/nginx
          readOnly: true
        - name: nginx-server-certs
          mountPath: /etc/nginx-server-certs
          readOnly: true
        - name: nginx-ca-certs
          mountPath: /etc/nginx-ca-certs
          readOnly: true
      volumes:
      - name: nginx-config
        configMap:
          name: nginx-configmap
      - name: nginx-server-certs
        secret:
          secretName: nginx-server-certs
      - name: nginx-ca-certs
        secret:
          secretName: nginx-ca-certs
"""
NGINX_VIA_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - my-nginx.mesh-external.svc.cluster.local
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-nginx
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: nginx
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-nginx-through-egress-gateway
spec:
  hosts:
  - my-nginx.mesh-external.svc.cluster.local
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: nginx
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: my-nginx.mesh-external.svc.cluster.local
        port:
          number: 443
      weight: 100
"""
ORIGINATE_MTLS = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: originate-mtls-for-nginx
  namespace: istio-system
spec:
  host: my-nginx.mesh-external.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: MUTUAL
        credentialName: client-credential # must match the secret holding the client certs
        sni: my-nginx.mesh-external.svc.cluster.local
"""


def test_05_mutual_tls_origination_at_the_egress_gateway(sh: Shell) -> None:
    from test_shims_walkthrough import mkcert

    from lablib import certs

    ca = certs.RootCA.load_or_create(sh.work / "example-ca")
    shutil.copyfile(ca.cert_path, sh.work / "example.com.crt")
    host = "my-nginx.mesh-external.svc.cluster.local"
    mkcert(ca, sh.work, f"{host}.crt", f"{host}.key", host)
    mkcert(ca, sh.work, "client.example.com.crt", "client.example.com.key",
           "client.example.com", client=True)
    sh.ok("kubectl create namespace mesh-external")
    sh.ok(f"kubectl create -n mesh-external secret tls nginx-server-certs --key {host}.key "
          f"--cert {host}.crt")
    sh.ok("kubectl create -n mesh-external secret generic nginx-ca-certs "
          "--from-file=example.com.crt")
    (sh.work / "nginx.conf").write_text(NGINX_MTLS_CONF)
    sh.ok("kubectl create configmap nginx-configmap -n mesh-external "
          "--from-file=nginx.conf=./nginx.conf")
    sh.ok("kubectl apply -f -", MY_NGINX_MTLS)
    sh.ok("kubectl wait --for=condition=ready pod -l run=my-nginx -n mesh-external "
          "--timeout=60s")
    sh.ok("kubectl create secret -n istio-system generic client-credential "
          "--from-file=tls.key=client.example.com.key "
          "--from-file=tls.crt=client.example.com.crt --from-file=ca.crt=example.com.crt")
    sh.ok("kubectl apply -f -", NGINX_VIA_GATEWAY)
    # Before origination the gateway sends plain HTTP to nginx's TLS port: no page.
    before = run(sh, f"{EXEC}curl -sS http://{host}").out
    assert "Welcome to nginx!" not in before
    sh.ok("kubectl apply -f -", ORIGINATE_MTLS)
    page = run(sh, f"{EXEC}curl -sS http://{host}").out
    assert "<title>Welcome to nginx!</title>" in page, page
    # Without the client certificate (SIMPLE), nginx refuses the request: its 400.
    sh.ok("kubectl apply -f -", ORIGINATE_MTLS.replace("mode: MUTUAL", "mode: SIMPLE"))
    refused = run(sh, f"{EXEC}curl -sS http://{host}").out
    assert "No required SSL certificate was sent" in refused, refused
