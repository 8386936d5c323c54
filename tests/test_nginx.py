"""The nginx stand-in: nginx.conf parsing, mounted paths, and a real TLS client against it."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from walkthrough_samples import NGINX_CONF

from lablib import certs
from lablib.apps import nginx
from lablib.local.images import command_for

HOST = "nginx.example.com"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> certs.RootCA:
    return certs.RootCA.load_or_create(tmp_path_factory.mktemp("ca"))


def secret_folder(ca: certs.RootCA, folder: Path, *names: str) -> Path:
    """A mounted `kubernetes.io/tls` secret volume: tls.crt and tls.key for `names`."""
    crt, key = certs.issue_server(ca, list(names), folder / "issued")
    secret = certs.tls_secret("nginx-tls-secret", "ns", crt, key)
    certs.mount_secret(secret, folder / "volume")
    return folder / "volume"


@pytest.fixture
def volumes(tmp_path, ca) -> dict[str, str]:
    """The walkthrough pod's mounts: the ConfigMap at /etc/nginx, the Secret at its folder."""
    conf = tmp_path / "nginx-config"
    conf.mkdir()
    (conf / "nginx.conf").write_text(NGINX_CONF)
    return {"/etc/nginx": str(conf),
            "/etc/nginx-server-certs": str(secret_folder(ca, tmp_path, HOST))}


class Running:
    """A started stand-in process and the loopback port it serves."""

    def __init__(self, mounts: dict[str, str], container_port: int | None = None) -> None:
        self.port = free_port()
        env = dict(os.environ, LAB_MOUNTS=json.dumps(mounts))
        port_arg = f"{container_port}={self.port}" if container_port else str(self.port)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lablib.apps.nginx", "--port", port_arg],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait(self) -> Running:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.communicate()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the stand-in never listened")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.communicate(timeout=10)


@pytest.fixture
def run() -> Iterator:
    started: list[Running] = []

    def start(mounts: dict[str, str], container_port: int | None = None) -> Running:
        started.append(Running(mounts, container_port))
        return started[-1].wait()

    yield start
    for proc in started:
        proc.stop()


def tls_get(port: int, ca_file: Path | None, sni: str, path: str = "/",
            method: str = "GET") -> tuple[http.client.HTTPResponse, bytes, x509.Certificate]:
    """An HTTPS request with certificate verification, as `curl --cacert` does."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if ca_file is None:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    # Connect by IP but send the SNI and Host of the name, like curl --resolve.
    conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                                    server_hostname=sni)
    conn.request(method, path, headers={"Host": sni})
    response = conn.getresponse()
    body = response.read()
    der = conn.sock.getpeercert(binary_form=True)
    conn.close()
    return response, body, x509.load_der_x509_certificate(der)


def dns_names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


# --- parsing and mapping -------------------------------------------------------------------


def test_the_walkthrough_config_parses_into_directives():
    tree = nginx.parse(NGINX_CONF)
    assert [d.name for d in tree] == ["events", "http"]
    http_block = tree[1]
    log_format = next(http_block.children("log_format"))
    assert log_format.args[0] == "main" and log_format.args[1].startswith("$remote_addr")
    server = next(http_block.children("server"))
    assert next(server.children("listen")).args == ["443", "ssl"]
    assert next(server.children("ssl_certificate")).line == 18


@pytest.mark.parametrize("text, where", [
    ("http { server { listen 443 ssl; }", "unexpected end of file"),
    ("http { } }", 'unexpected "}"'),
    ("http { listen 80 ; ; }", 'unexpected ";"'),
])
def test_malformed_configs_name_the_problem(text, where):
    with pytest.raises(nginx.NginxConfigError, match=where):
        nginx.parse(text)


def test_mounted_paths_map_by_the_longest_mount_path(tmp_path):
    mounts = nginx.Mounts({"/etc/nginx": str(tmp_path / "conf"),
                           "/etc/nginx/certs": str(tmp_path / "certs"),
                           "/etc/nginx-server-certs": str(tmp_path / "secret")})
    assert mounts.local("/etc/nginx/nginx.conf") == tmp_path / "conf" / "nginx.conf"
    assert mounts.local("/etc/nginx/certs/tls.crt") == tmp_path / "certs" / "tls.crt"
    assert mounts.local("/etc/nginx-server-certs/tls.key") == tmp_path / "secret" / "tls.key"
    assert mounts.local("/etc/nginx") == tmp_path / "conf"
    assert mounts.local("/etc/nginxother/x") is None
    assert mounts.local("/usr/share/nginx/html") is None


def test_servers_honour_listen_names_root_index_and_certificate_paths(volumes):
    mounts = nginx.Mounts(volumes)
    [server] = nginx.load_servers(NGINX_CONF, mounts)
    assert (server.port, server.ssl, server.names) == (443, True, [HOST])
    assert str(server.root) == "/usr/share/nginx/html" and server.local_root is None
    assert server.index == ["index.html"]
    assert server.certificate == Path(volumes["/etc/nginx-server-certs"]) / "tls.crt"
    assert server.key == Path(volumes["/etc/nginx-server-certs"]) / "tls.key"


def test_a_certificate_outside_every_volume_is_an_error_naming_directive_and_path(volumes):
    del volumes["/etc/nginx-server-certs"]
    with pytest.raises(nginx.NginxConfigError) as error:
        nginx.load_servers(NGINX_CONF, nginx.Mounts(volumes))
    message = str(error.value)
    assert 'ssl_certificate "/etc/nginx-server-certs/tls.crt"' in message
    assert "nginx.conf:18" in message and "mounted: /etc/nginx" in message and "fix:" in message


def test_an_ssl_listen_without_a_certificate_is_an_error():
    text = "http { server { listen 8443 ssl; server_name a.example.com; } }"
    with pytest.raises(nginx.NginxConfigError, match='no "ssl_certificate" is defined'):
        nginx.load_servers(text, nginx.Mounts({}))


def test_the_served_port_is_the_named_one_else_the_tls_one():
    servers = nginx.load_servers("http { server { listen 80; } server { listen 8080; } }",
                                 nginx.Mounts({}))
    assert nginx.pick_port(servers, None) == 80
    assert nginx.pick_port(servers, 8080) == 8080
    with pytest.raises(nginx.NginxConfigError, match="not on the container port 443"):
        nginx.pick_port(servers, 443)


def test_the_nginx_image_runs_the_stand_in_on_the_declared_port():
    for image in ("nginx", "docker.io/library/nginx:1.25", "nginx:latest"):
        argv = command_for(image, port_map={443: 31443}, env={})
        assert argv[1:] == ["-m", "lablib.apps.nginx", "--port", "31443"], image


# --- a real TLS client against the running stand-in ------------------------------------------


def test_serves_the_walkthrough_config_over_tls_with_its_own_certificate(run, volumes, ca):
    server = run(volumes)
    response, body, cert = tls_get(server.port, ca.cert_path, HOST)
    assert response.status == 200 and response.getheader("Server") == "nginx"
    assert b"<title>Welcome to nginx!</title>" in body
    assert response.getheader("Content-Type") == "text/html"
    assert dns_names(cert) == [HOST] and cert.issuer == ca.cert.subject
    missing, page, _ = tls_get(server.port, ca.cert_path, HOST, "/nothing-here")
    assert missing.status == 404 and b"404 Not Found" in page


def test_curl_verifies_the_certificate_against_the_lab_ca(run, volumes, ca):
    server = run(volumes)
    base = ["curl", "-s", "--max-time", "5", "--resolve", f"{HOST}:{server.port}:127.0.0.1"]
    ok = subprocess.run([*base, "--cacert", str(ca.cert_path), "-o", "/dev/null", "-w",
                         "%{http_code}", f"https://{HOST}:{server.port}/"],
                        capture_output=True, text=True)
    assert (ok.returncode, ok.stdout) == (0, "200")
    untrusted = subprocess.run([*base, f"https://{HOST}:{server.port}/"], capture_output=True)
    assert untrusted.returncode == 60  # the system store does not know the lab CA


def test_a_mounted_root_is_served_statically(run, volumes, tmp_path):
    html = tmp_path / "html"
    (html / "docs").mkdir(parents=True)
    (html / "index.html").write_text("<h1>mine</h1>")
    (html / "style.css").write_text("h1 {}")
    (html / "empty").mkdir()
    volumes["/usr/share/nginx/html"] = str(html)
    server = run(volumes)
    index, body, _ = tls_get(server.port, None, HOST)
    assert (index.status, body) == (200, b"<h1>mine</h1>") and index.getheader("Last-Modified")
    css, body, _ = tls_get(server.port, None, HOST, "/style.css")
    assert (css.status, css.getheader("Content-Type"), body) == (200, "text/css", b"h1 {}")
    assert tls_get(server.port, None, HOST, "/empty/")[0].status == 403
    assert tls_get(server.port, None, HOST, "/../../etc/passwd")[0].status == 404
    head, body, _ = tls_get(server.port, None, HOST, "/index.html", method="HEAD")
    assert head.status == 200 and head.getheader("Content-Length") == "13" and body == b""


def test_sni_picks_the_certificate_and_host_the_server(run, ca, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "nginx.conf").write_text("""
http {
  server { listen 443 ssl; server_name a.example.com; root /srv/a;
           ssl_certificate certs/a/tls.crt; ssl_certificate_key certs/a/tls.key; }
  server { listen 443 ssl default_server; server_name *.b.example.com; root /srv/b;
           ssl_certificate certs/b/tls.crt; ssl_certificate_key certs/b/tls.key; }
}""")
    for site in ("a", "b"):
        (tmp_path / "srv" / site).mkdir(parents=True)
        (tmp_path / "srv" / site / "index.html").write_text(f"site {site}")
    mounts = {"/etc/nginx": str(conf), "/srv": str(tmp_path / "srv"),
              "/etc/nginx/certs/a": str(secret_folder(ca, tmp_path / "a", "a.example.com")),
              "/etc/nginx/certs/b": str(secret_folder(ca, tmp_path / "b", "*.b.example.com"))}
    server = run(mounts, container_port=443)
    _, body, cert = tls_get(server.port, ca.cert_path, "a.example.com")
    assert body == b"site a" and dns_names(cert) == ["a.example.com"]
    _, body, cert = tls_get(server.port, ca.cert_path, "www.b.example.com")
    assert body == b"site b" and dns_names(cert) == ["*.b.example.com"]
    # An unknown name gets the default server (and its certificate, which does not match).
    _, body, cert = tls_get(server.port, None, "c.example.com")
    assert body == b"site b" and dns_names(cert) == ["*.b.example.com"]


def test_without_a_mounted_config_it_is_the_image_default_plain_http(run):
    server = run({})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200 and b"Welcome to nginx!" in response.read()
    assert response.getheader("Server") == "nginx"


@pytest.mark.parametrize("drop, directive", [
    ("/etc/nginx-server-certs", 'ssl_certificate "/etc/nginx-server-certs/tls.crt"'),
    ("tls.key", 'ssl_certificate_key "/etc/nginx-server-certs/tls.key"'),
])
def test_an_unmounted_certificate_stops_the_process_with_a_clear_message(volumes, drop,
                                                                         directive):
    if drop.startswith("/"):
        del volumes[drop]
    else:
        (Path(volumes["/etc/nginx-server-certs"]) / drop).unlink()
    started = Running(volumes)
    out, err = started.proc.communicate(timeout=15)
    assert started.proc.returncode == 1
    assert err.startswith("nginx: [emerg] ") and directive in err, err


def test_a_client_that_hangs_up_before_the_handshake_disturbs_nobody(run, volumes, ca):
    server = run(volumes)
    silent = socket.create_connection(("127.0.0.1", server.port))  # never says hello
    try:
        for _ in range(3):
            socket.create_connection(("127.0.0.1", server.port)).close()
        response, _, _ = tls_get(server.port, ca.cert_path, HOST)
        assert response.status == 200
    finally:
        silent.close()


def test_a_server_level_return_answers_every_request_with_that_status(run, tmp_path):
    # The resilience lab's failing httpbin replica: nginx with `return 503;`.
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "nginx.conf").write_text("events {}\nhttp { server { listen 80; return 503; } }\n")
    server = run({"/etc/nginx": str(conf)})
    for method, path in (("GET", "/headers"), ("POST", "/post"), ("GET", "/")):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request(method, path)
        response = conn.getresponse()
        assert response.status == 503 and b"503 Service Temporarily Unavailable" in response.read()


def test_a_return_of_an_unknown_status_is_refused_by_name():
    with pytest.raises(nginx.NginxConfigError, match='"return 200"'):
        nginx.load_servers("http { server { listen 80; return 200; } }", nginx.Mounts({}))
