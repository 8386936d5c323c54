"""What Istio's certificate makefiles (`tools/certs/Makefile.selfsigned.mk`) do, on the kit's
certificate code: the same files, in the same places, without openssl.

    python -m lablib.certs_make root-ca DIR          # DIR/root-cert.pem, DIR/root-key.pem
    python -m lablib.certs_make cacerts DIR NAME     # DIR/NAME/ca-cert.pem, ca-key.pem, ...
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from . import certs
from .errors import LabError

ROOT_CERT, ROOT_KEY = "root-cert.pem", "root-key.pem"


def root_ca(folder: Path) -> None:
    """Istio's `make root-ca`: a self-signed root as root-cert.pem and root-key.pem (0600)."""
    with tempfile.TemporaryDirectory() as scratch:
        root = certs.RootCA.load_or_create(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root.key_path, folder / ROOT_KEY)  # copy2 keeps the key's 0600
        shutil.copy2(root.cert_path, folder / ROOT_CERT)


def cacerts(folder: Path, name: str, days: int) -> None:
    """Istio's `make NAME-cacerts`: an intermediate CA for istiod signed by the root in
    `folder`, as the four files of the `cacerts` Secret in `folder/NAME`."""
    missing = [f for f in (ROOT_CERT, ROOT_KEY) if not (folder / f).is_file()]
    if missing:
        raise certs.CertificateError(f"{folder / missing[0]} is missing\n    fix: make -f "
                                     f"Makefile.selfsigned.mk root-ca first")
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copy2(folder / ROOT_CERT, Path(scratch) / certs.ROOT_CERT)
        shutil.copy2(folder / ROOT_KEY, Path(scratch) / certs.ROOT_KEY)
        root = certs.RootCA.load(scratch)
        certs.intermediate_ca(root, name, folder / name, days=days)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lablib.certs_make", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("root-ca").add_argument("folder", type=Path)
    intermediate = sub.add_parser("cacerts")
    intermediate.add_argument("folder", type=Path)
    intermediate.add_argument("name")
    intermediate.add_argument("--days", type=int, default=730)
    args = parser.parse_args(argv)
    try:
        if args.command == "root-ca":
            root_ca(args.folder)
        else:
            cacerts(args.folder, args.name, args.days)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
