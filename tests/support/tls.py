"""Small certificate authorities and certificates made with the openssl CLI."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from .procs import require_binary

__all__ = ["TestCA", "make_ca"]

OPENSSL_TIMEOUT = 30.0


def _openssl(*args: str, cwd: Path) -> None:
    argv = [require_binary("openssl"), *args]
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=OPENSSL_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")


_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


@dataclass(frozen=True)
class TestCA:
    """A throw-away CA: ``cert`` is the PEM to trust."""

    __test__ = False  # not a pytest test class

    directory: Path
    cert: Path
    key: Path

    def issue(self, stem: str, names: list[str], *, days: int = 2) -> tuple[Path, Path]:
        """A server certificate for ``names`` (DNS names or IP addresses):
        returns (chain PEM: leaf then CA, key PEM)."""
        leaf_key = self.directory / f"{stem}.key"
        csr = self.directory / f"{stem}.csr"
        leaf = self.directory / f"{stem}.pem"
        ext = self.directory / f"{stem}.ext"
        alt = ",".join(
            f"IP:{n}" if n.replace(".", "").isdigit() or ":" in n else f"DNS:{n}" for n in names
        )
        ext.write_text(
            f"subjectAltName={alt}\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        )
        _openssl("req", *_KEY, "-keyout", str(leaf_key), "-out", str(csr),
                 "-subj", f"/CN={names[0]}", cwd=self.directory)  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey",
                 str(self.key), "-CAcreateserial", "-days", str(days), "-out", str(leaf),
                 "-extfile", str(ext), cwd=self.directory)  # fmt: skip
        chain = self.directory / f"{stem}.chain.pem"
        chain.write_text(leaf.read_text() + self.cert.read_text())
        return chain, leaf_key


def make_ca(directory: Path, name: str = "policy-host test CA") -> TestCA:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.pem", directory / "ca.key"
    _openssl("req", "-x509", *_KEY, "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)  # fmt: skip
    return TestCA(directory, cert, key)
