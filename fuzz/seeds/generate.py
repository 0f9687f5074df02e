#!/usr/bin/env python3
"""Writes the fuzz seed corpora from the shared QR vectors.

  python3 fuzz/seeds/generate.py [path/to/mxqr]

qr_decode/ gets every vector payload (valid and invalid) as a binary file. With the path of a
built mxqr binary, qr_image/ also gets each valid payload drawn as a 1-pixel-per-module PNG
(small images keep the image fuzzer fast).
"""
import json
import pathlib
import re
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
VECTORS = HERE.parent.parent / "crates" / "mxqr-proto" / "tests" / "vectors" / "qr.json"


def slug(kind, index, name):
    return f"{kind}-{index:02}-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def main():
    vectors = json.loads(VECTORS.read_text())
    mxqr = sys.argv[1] if len(sys.argv) > 1 else None
    (HERE / "qr_decode").mkdir(exist_ok=True)
    if mxqr:
        (HERE / "qr_image").mkdir(exist_ok=True)
    for kind in ("valid", "invalid"):
        for i, v in enumerate(vectors[kind]):
            name = slug(kind, i, v["name"])
            (HERE / "qr_decode" / f"{name}.bin").write_bytes(bytes.fromhex(v["hex"]))
            if mxqr and kind == "valid":
                png = HERE / "qr_image" / f"{name}.png"
                subprocess.run(
                    [mxqr, "qr", "render", v["hex"], "--png", str(png), "--scale", "1"],
                    check=True,
                )


if __name__ == "__main__":
    main()
