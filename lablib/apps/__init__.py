"""Local stand-ins for Istio's sample apps (Bookinfo, tcp-echo, sleep), one process each.

Each app binds 127.0.0.1 on the port given by `--port`, logs one line per request to stdout
and exits cleanly on SIGTERM. Outbound calls use `urllib.request`, which honours `http_proxy`:
that is how an app reaches `http://reviews:9080` through its sidecar's outbound listener.
"""
