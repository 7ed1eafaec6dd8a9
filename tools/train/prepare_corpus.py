#!/usr/bin/env python3
"""Fetch and split the training corpus of the demo model (standard library only).

The corpus is the reStructuredText source of the Python 3.11 documentation
(about 11 MB of English), which Debian ships in the package `python3.11-doc`
under /usr/share/doc/python3.11/html/_sources/. Licence: PSF License Agreement
version 2 (a permissive licence; see the package's
/usr/share/doc/python3.11-doc/copyright).

What this script does, deterministically:

1. `apt-get download python3.11-doc` into DATA/deb/ and `dpkg -x` it there
   (no root needed, nothing installed on the system); with `--from-system` it
   reads an installed copy instead.
2. Reads every `*.rst.txt` under `_sources/`, sorted by path, and normalises
   each document's line ends to "\\n" with exactly one newline at its end.
3. Holds out whole documents as the test split: a document is held out when
   the first byte of sha1(relative path) is below --test-per-256 (default 5,
   about 2 %). Everything else is the training split. The documents are
   concatenated in path order, each followed by one blank line.
4. Writes DATA/train.txt, DATA/test.txt, DATA/manifest.json (paths, sizes,
   sha256, package version), and prints the sha256 of both splits.

DATA is --data, else $LUNA_DATA, else ~/.cache/luna-data.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = "python3.11-doc"
SOURCES = "usr/share/doc/python3.11/html/_sources"


def sh(cmd, cwd=None):
    print("+", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def fetch(data: Path, from_system: bool) -> tuple[Path, str]:
    """Returns the _sources directory and the package version it came from."""
    if from_system:
        root = Path("/") / SOURCES
        version = sh(["dpkg-query", "-W", "-f=${Version}", PACKAGE]).strip()
        if not root.is_dir():
            sys.exit(f"{root} is missing: run `apt-get install -y {PACKAGE}` or drop --from-system")
        return root, version
    deb_dir = data / "deb"
    deb_dir.mkdir(parents=True, exist_ok=True)
    debs = sorted(deb_dir.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        try:
            sh(["apt-get", "download", PACKAGE], cwd=deb_dir)
        except subprocess.CalledProcessError as e:
            sys.exit(
                f"apt-get download {PACKAGE} failed:\n{e.stderr}\n"
                "run `apt-get update` first (as root), or install the package and pass --from-system"
            )
        debs = sorted(deb_dir.glob(f"{PACKAGE}_*.deb"))
    deb = debs[-1]
    version = sh(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    tree = deb_dir / "root"
    if not (tree / SOURCES).is_dir():
        sh(["dpkg-deb", "-x", str(deb), str(tree)])
    return tree / SOURCES, version


def normalise(raw: bytes) -> bytes:
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").rstrip(b"\n")
    return text + b"\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="output folder (default $LUNA_DATA or ~/.cache/luna-data)")
    ap.add_argument("--from-system", action="store_true", help=f"read an installed {PACKAGE} instead of downloading the .deb")
    ap.add_argument("--test-per-256", type=int, default=5, help="held-out share of documents, in 256ths (default 5, ~2%%)")
    args = ap.parse_args()
    data = args.data or Path(os.environ.get("LUNA_DATA") or Path.home() / ".cache" / "luna-data")
    data.mkdir(parents=True, exist_ok=True)

    root, version = fetch(data, args.from_system)
    files = sorted(p for p in root.rglob("*.rst.txt") if p.is_file())
    if not files:
        sys.exit(f"no *.rst.txt under {root}")
    train, test, manifest = [], [], []
    for p in files:
        rel = p.relative_to(root).as_posix()
        doc = normalise(p.read_bytes())
        held_out = hashlib.sha1(rel.encode()).digest()[0] < args.test_per_256
        (test if held_out else train).append(doc)
        manifest.append({"path": rel, "bytes": len(doc), "split": "test" if held_out else "train"})
    out = {}
    for name, docs in (("train", train), ("test", test)):
        blob = b"\n".join(docs)  # one blank line between documents
        (data / f"{name}.txt").write_bytes(blob)
        out[name] = {"documents": len(docs), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    info = {"package": PACKAGE, "version": version, "sources": SOURCES, "test_per_256": args.test_per_256,
            "splits": out, "documents": manifest}
    (data / "manifest.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{PACKAGE} {version}: {len(files)} documents")
    for name, s in out.items():
        print(f"{data / (name + '.txt')}: {s['documents']} documents, {s['bytes']} bytes, sha256 {s['sha256']}")


if __name__ == "__main__":
    main()
