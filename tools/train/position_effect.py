#!/usr/bin/env python3
"""Bits per byte by position in a document read in one pass, with the text held fixed.

Read in its path order, the held-out split puts particular documents at
particular positions, so its bits per byte by position mix two things: how far
into the sequence a byte is, and how hard that document is. This scores the
split once per cyclic rotation of its document order (14 one-pass readings of
the same 175,412 bytes: every document once at the start, and at every later
place), and prints each position range's bits per byte over all of them, next
to the path-order reading. A model that reads worse the further it gets shows
it here; a harder document does not, since it lands in every range. Then
four controls: the split in blocks of 128 bytes by the same ranges (the same
bytes with at most 127 bytes of context: what the context is worth at each
position); each document read alone (from its own start), over all of them
and over the documents over 9 KiB alone (both ranges from the same
documents); the split's bytes past 8 KiB read as a sequence of their own
against inside the whole pass (position alone); and the bytes past 8 KiB of
the documents over 9 KiB read after their first 8 KiB against from there on
(what the document's start is worth).

    python tools/train/position_effect.py --model models/luna-pydoc-bytes.safetensors [--dtype f32]

Documents are cut from DATA/test.txt with DATA/manifest.json (prepare_corpus.py).
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval import RANGES, block_rows, range_means, score_blocks, score_whole  # noqa: E402
from luna_model import load  # noqa: E402


def documents(data_dir):
    """The held-out documents' bytes, in path order (each with its trailing newline)."""
    text = (data_dir / "test.txt").read_bytes()
    sizes = [d["bytes"] for d in json.loads((data_dir / "manifest.json").read_text())["documents"] if d["split"] == "test"]
    docs, at = [], 0
    for size in sizes:
        docs.append(text[at:at + size])
        at += size + 1  # one blank line between documents
    if b"\n".join(docs) != text:
        sys.exit("test.txt does not match manifest.json: run prepare_corpus.py again")
    return docs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("LUNA_DATA") or Path.home() / ".cache" / "luna-data"))
    ap.add_argument("--dtype", default="f64", choices=["f64", "f32"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load(args.model, torch.float64 if args.dtype == "f64" else torch.float32)
    docs = documents(args.data)
    totals = np.zeros(len(RANGES))
    counts = np.zeros(len(RANGES))
    for r in range(len(docs)):
        order = docs[r:] + docs[:r]
        bits = score_whole(model, np.frombuffer(b"\n".join(order), dtype=np.uint8))
        sums, ns = range_means(bits)
        totals += sums
        counts += ns
        if r == 0:
            print("path order:    " + "  ".join(f"{label} {s / n:.4f}" for (_, _, label), s, n in zip(RANGES, sums, ns) if n),
                  flush=True)
    print(f"{len(docs)} rotations: " + "  ".join(f"{label} {t / n:.4f}" for (_, _, label), t, n in zip(RANGES, totals, counts) if n))

    def show(label, sums, ns):
        print(label + "  ".join(f"{name} {t / n:.4f} ({int(n)} B)" for (_, _, name), t, n in zip(RANGES, sums, ns) if n), flush=True)

    split = np.frombuffer(b"\n".join(docs), dtype=np.uint8)
    whole = score_whole(model, split)
    blocks = score_blocks(model, block_rows(split, 128)).reshape(-1)[:len(split)]
    (ws, wn), (bs, _) = range_means(whole), range_means(blocks)
    print("context, path order (blocks of 128 - one pass): " + "  ".join(
        f"{label} {b / n:.4f} - {w / n:.4f} = {(b - w) / n:.4f}" for (_, _, label), w, b, n in zip(RANGES, ws, bs, wn) if n), flush=True)
    alone = [range_means(score_whole(model, np.frombuffer(d, dtype=np.uint8))) for d in docs]
    show("each document alone: ", sum(a[0] for a in alone), sum(a[1] for a in alone))
    long_alone = [a for a, d in zip(alone, docs) if len(d) > 9 * 1024]
    show(f"the {len(long_alone)} documents over 9 KiB alone: ", sum(a[0] for a in long_alone), sum(a[1] for a in long_alone))
    inside = whole[8191:].mean().item()  # (1-based positions from 8,192, as RANGES)
    own = score_whole(model, split[8191:]).mean().item()
    print(f"the split's bytes past 8 KiB: {inside:.4f} in the whole pass, {own:.4f} read as a sequence of their own")
    after = fresh = count = 0.0
    long_docs = [np.frombuffer(d, dtype=np.uint8) for d in docs if len(d) > 9 * 1024]
    for x in long_docs:
        after += score_whole(model, x)[8192:].sum().item()
        fresh += score_whole(model, x[8192:]).sum().item()
        count += len(x) - 8192
    print(f"{len(long_docs)} documents over 9 KiB, their bytes past 8 KiB: {after / count:.4f} after their first 8 KiB, "
          f"{fresh / count:.4f} read from there on their own")


if __name__ == "__main__":
    main()
