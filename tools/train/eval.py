#!/usr/bin/env python3
"""Held-out bits per byte of a model file, in PyTorch (float64), the way `luna score` counts them.

Two protocols, both scoring every byte once after a bos token:

* blocks (default): the text is cut into consecutive blocks of --block bytes
  (default: the model's training window, from its `luna.train` metadata), and
  each block is a sequence bos + block. `--write-tokens F.safetensors` writes
  these sequences (int32 [blocks, block + 1], the last one right-padded with
  padding_idx) so that the engine scores the very same thing:

      luna score --model M.safetensors --tokens F.safetensors

  (its "bits per token" are bits per byte: every scored token is a byte).

* --whole: the whole file as one sequence, bos + every byte, which is what
  `luna score --model M --text FILE` computes. A causal Luna model reads its
  past only through running means (the 1/t of docs/luna.md, "Causal
  attention"), so far past its training window it predicts worse; --profile
  shows bits per byte by position.

    python tools/train/eval.py --model models/luna-pydoc-bytes.safetensors [--text FILE] [--whole] [--profile]
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from luna_model import BOS, OFFSET, PAD, load  # noqa: E402


def block_rows(data: np.ndarray, block: int):
    nb = -(-len(data) // block)
    rows = np.full((nb, block + 1), PAD, dtype=np.int64)
    rows[:, 0] = BOS
    for i in range(nb):
        chunk = data[i * block:(i + 1) * block]
        rows[i, 1:1 + len(chunk)] = chunk.astype(np.int64) + OFFSET
    return torch.from_numpy(rows)


@torch.no_grad()
def score_blocks(model, rows, batch=64):
    """Surprisal in bits of every byte, [blocks, block] (0 past a block's end)."""
    out = []
    for i in range(0, len(rows), batch):
        x = rows[i:i + batch]
        valid = x[:, 1:] != PAD
        # Padding only ever follows a block's bytes, so it cannot change them (causal); give it a byte id.
        inp = torch.where(x == PAD, torch.full_like(x, OFFSET), x)[:, :-1]
        logits, _ = model(inp)
        bits = F.cross_entropy(logits.transpose(1, 2), torch.where(valid, x[:, 1:], 0), reduction="none") / math.log(2)
        out.append(bits * valid)
    return torch.cat(out)


@torch.no_grad()
def score_whole(model, data: np.ndarray, segment=8192):
    """Surprisal in bits of every byte of one sequence bos + data, computed in segments with the state carried."""
    ids = torch.from_numpy(np.concatenate([[BOS], data.astype(np.int64) + OFFSET]))
    inp, tgt = ids[:-1], ids[1:]
    states, out = None, []
    for s in range(0, len(inp), segment):
        logits, states = model(inp[None, s:s + segment], states=states)
        out.append(F.cross_entropy(logits[0], tgt[s:s + segment], reduction="none") / math.log(2))
    return torch.cat(out)


# The position ranges of the long-document report (1-based byte positions, end excluded; None: to the end).
RANGES = ((1, 128, "first 128 B"), (128, 1024, "128 B-1 KiB"), (1024, 8192, "1-8 KiB"),
          (8192, 65536, "8-64 KiB"), (65536, None, "past 64 KiB"), (8192, None, "past 8 KiB"))


def range_means(bits_by_pos):
    """Total bits and bytes of each of RANGES."""
    n = len(bits_by_pos)
    segs = [bits_by_pos[lo - 1:(hi - 1 if hi else n)] for lo, hi, _ in RANGES]
    return np.array([s.sum().item() for s in segs]), np.array([len(s) for s in segs])


def ranges(bits_by_pos):
    """Mean bits per byte over RANGES."""
    sums, counts = range_means(bits_by_pos)
    return "by range: " + ", ".join(f"{label} {s / c:.4f}" for (_, _, label), s, c in zip(RANGES, sums, counts) if c)


def profile(bits_by_pos):
    """Mean bits per byte over position ranges [1,2), [2,4), [4,8), ... (1-based byte positions)."""
    n = len(bits_by_pos)
    lines, lo = [], 1
    while lo <= n:
        hi = min(2 * lo, n + 1)
        seg = bits_by_pos[lo - 1:hi - 1]
        lines.append(f"  bytes {lo:>7}..{hi - 1:<7} {seg.mean().item():.4f} bpb")
        lo = hi
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--text", type=Path, default=None, help="default: DATA/test.txt ($LUNA_DATA or ~/.cache/luna-data)")
    ap.add_argument("--block", type=int, default=None, help="bytes per block (default: the model's training window)")
    ap.add_argument("--whole", action="store_true", help="score the whole file as one sequence (like luna score --text)")
    ap.add_argument("--limit", type=int, default=None, help="only the first LIMIT bytes of the text")
    ap.add_argument("--write-tokens", type=Path, default=None, help="write the block sequences for luna score --tokens")
    ap.add_argument("--profile", action="store_true", help="bits per byte by position")
    ap.add_argument("--dtype", default="f64", choices=["f64", "f32"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    text = args.text or Path(os.environ.get("LUNA_DATA") or Path.home() / ".cache" / "luna-data") / "test.txt"
    data = np.fromfile(text, dtype=np.uint8)
    if args.limit:
        data = data[:args.limit]
    if len(data) == 0:
        sys.exit(f"{text} is empty")
    model, meta = load(args.model, torch.float64 if args.dtype == "f64" else torch.float32)
    train = json.loads(meta.get("luna.train", "{}"))
    block = args.block or train.get("seq_len") or 256
    t = time.time()
    if args.whole:
        bits = score_whole(model, data)
        total, count = bits.sum().item(), len(bits)
        what = f"one sequence of {count} bytes after bos (as luna score --text)"
        by_pos = bits
    else:
        rows = block_rows(data, block)
        if args.write_tokens:
            from safetensors.torch import save_file

            save_file({"tokens": rows.to(torch.int32).contiguous()}, str(args.write_tokens))
            print(f"wrote {args.write_tokens}: tokens int32 {list(rows.shape)} (bos + {block}-byte blocks, "
                  f"padded with {PAD}); score them with: luna score --model {args.model} --tokens {args.write_tokens}")
        bits = score_blocks(model, rows)
        total, count = bits.sum().item(), int((rows[:, 1:] != PAD).sum().item())
        what = f"{len(rows)} blocks of {block} bytes, each after bos"
        valid = (rows[:, 1:] != PAD).double()
        by_pos = bits.sum(0) / valid.sum(0).clamp(min=1)
    print(f"{total / count:.6f} bits per byte ({count} bytes scored, {total:.1f} bits in all): {text}, {what}; "
          f"{args.dtype}, {time.time() - t:.1f} s")
    if args.profile:
        print("bits per byte by position:\n" + profile(by_pos))
        print(ranges(by_pos))


if __name__ == "__main__":
    main()
