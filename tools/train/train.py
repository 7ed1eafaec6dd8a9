#!/usr/bin/env python3
r"""Train a byte-level causal Luna LM (docs/luna.md, "The causal LM") and export it for `luna`.

    python tools/train/train.py --out models/luna-pydoc-bytes.safetensors \
        --embed-dim 192 --ffn-dim 768 --layers 4 --heads 4 --projection-length 32 \
        --seq-len 128 --batch 32 --lr 2e-3 --warmup 100 --steps 3600 --eval-every 200 --stop-at 2918
    python tools/train/train.py ...the same flags... --steps 4400 --long-len 4096 --resume
    python tools/train/train.py ...the same flags... --steps 4600 --long-len 65536 --min-lr-ratio 0.25 --resume

(the shipped model, in three phases; models/README.md). Data: tools/train/prepare_corpus.py.

Training windows are `--seq-len` bytes drawn at random offsets of DATA/train.txt,
each with bos in front (so positions and the 1/t factors are those of a
document scored from its start). With --long-len, every --long-every-th step
trains on windows of that many bytes instead (as many bytes per step), so
the model also learns the regime of long documents, where the running means
of the causal attention hold thousands of bytes. The test split DATA/test.txt is cut into
consecutive blocks of `--seq-len` bytes, each scored as bos + block: this is
exactly what `luna score --tokens` computes on the token file that
`eval.py --write-tokens` writes, and every held-out byte is scored once.

The learning-rate schedule is a linear warm-up and a cosine decay over
`progress = step / --steps` (or, with --minutes, the larger of that and the
share of the time budget spent, so a time budget ends with a fully decayed
rate whatever the machine's speed; the shipped model uses --steps alone, so
that it does not depend on how busy the machine was). The model file is
written (atomically) at every evaluation and at the end, also on Ctrl-C or
SIGTERM, so a cut-short run still leaves a usable model; so is a checkpoint
(weights, optimiser, step, random state: DATA/<OUT name>.ckpt.pt, or --ckpt) from
which `--resume` continues the same run exactly where it stopped.
"""

import argparse
import csv
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from luna_model import BOS, OFFSET, LunaCausalLM, export, load, make_config  # noqa: E402


def data_dir(arg):
    return Path(arg or os.environ.get("LUNA_DATA") or Path.home() / ".cache" / "luna-data")


def blocks(data: np.ndarray, seq_len: int):
    """The held-out bytes as [nb, seq_len + 1] token rows (bos + block) and the valid length of each."""
    nb = -(-len(data) // seq_len)
    rows = np.full((nb, seq_len + 1), OFFSET, dtype=np.int64)  # filler past the end is never scored
    lengths = np.zeros(nb, dtype=np.int64)
    rows[:, 0] = BOS
    for i in range(nb):
        chunk = data[i * seq_len:(i + 1) * seq_len]
        rows[i, 1:1 + len(chunk)] = chunk.astype(np.int64) + OFFSET
        lengths[i] = len(chunk)
    return torch.from_numpy(rows), torch.from_numpy(lengths)


@torch.no_grad()
def eval_bits(model, rows, lengths, batch, device, chunk):
    """Total bits and bytes over the held-out blocks (each block scored after bos)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        x = rows[i:i + batch].to(device)
        n = lengths[i:i + batch].to(device)
        logits, _ = model(x[:, :-1], chunk=chunk)
        nll = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction="none")  # [b, seq_len]
        valid = torch.arange(nll.shape[1], device=device)[None, :] < n[:, None]
        total += (nll * valid).sum().item() / math.log(2)
        count += int(valid.sum().item())
    model.train()
    return total, count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="folder with train.txt and test.txt (default $LUNA_DATA or ~/.cache/luna-data)")
    ap.add_argument("--out", required=True, type=Path, help="the model file to write (.safetensors)")
    ap.add_argument("--log", type=Path, default=None, help="learning curve CSV (default: OUT with .csv)")
    # model
    ap.add_argument("--embed-dim", type=int, default=256)
    ap.add_argument("--ffn-dim", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--projection-length", "--proj-len", dest="projection_length", type=int, default=16,
                    help="projection_length l (--proj-len is the older spelling)")
    ap.add_argument("--post-norm", action="store_true", help="post-norm layers (default pre-norm)")
    ap.add_argument("--no-tie-kv", action="store_true", help="separate k_proj / v_proj")
    ap.add_argument("--activation", default="gelu", choices=["gelu", "relu"])
    # this project's local-context extension (docs/luna.md, "Local context"); off by default
    ap.add_argument("--decay", default=None,
                    help="per-head decay rates of the running sums, comma-separated, one per head (1: the authors' form)")
    ap.add_argument("--conv-width", type=int, default=0,
                    help="width of a causal depthwise convolution before the attention's projections (0: none)")
    ap.add_argument("--local-window", type=int, default=0,
                    help="a sliding-window softmax branch over the last W tokens beside the packed one (0: none; "
                         "PyTorch only, for the ablation: the engine does not run it)")
    ap.add_argument("--no-positions", action="store_true",
                    help="no_token_positional_embeddings: tokens get no absolute position (P keeps its rows); with "
                         "decay and the convolution the model then reads the same at any position")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start from this model file's weights (the extension's new weights start neutral: "
                         "the convolution as the identity); a fresh optimiser")
    # optimisation
    ap.add_argument("--seq-len", type=int, default=256, help="bytes per training window (after bos)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--long-len", type=int, default=0,
                    help="also train on long windows of this many bytes (0: never), so that the model learns what "
                         "the running means of a long document look like")
    ap.add_argument("--long-every", type=int, default=2,
                    help="with --long-len: every K-th step is batch*seq-len/long-len windows of --long-len bytes")
    ap.add_argument("--steps", type=int, default=1_000_000, help="at most this many steps")
    ap.add_argument("--minutes", type=float, default=None, help="time budget; the schedule ends when it is spent")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="stop at this step as a signal would (save, checkpoint), before the schedule of --steps ends; "
                         "a later --resume with other flags (e.g. --long-len, more --steps) continues from there")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--chunk", type=int, default=64, help="chunk of the parallel causal attention")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    ap.add_argument("--amp", default="off", choices=["off", "bf16"],
                    help="bf16 autocast for the projections and FFN (for GPUs; the attention sums stay in f32)")
    # evaluation and export
    ap.add_argument("--eval-every", type=int, default=200, help="steps between evaluations (and saves)")
    ap.add_argument("--eval-bytes", type=int, default=32768, help="held-out bytes for the periodic evaluations (0: all)")
    ap.add_argument("--eval-long", type=int, default=16384,
                    help="held-out bytes scored as one sequence at each evaluation (the long-document regime; 0: never)")
    ap.add_argument("--dtype", default="f16", choices=["f16", "f32"], help="storage type of the model file")
    ap.add_argument("--ckpt", type=Path, default=None, help="training checkpoint (default: DATA/<OUT name>.ckpt.pt)")
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint (same flags as the run that wrote it)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dd = data_dir(args.data)
    train = np.fromfile(dd / "train.txt", dtype=np.uint8)
    test = np.fromfile(dd / "test.txt", dtype=np.uint8)
    rows, lengths = blocks(test, args.seq_len)
    quick = args.eval_bytes and args.eval_bytes < len(test)
    qrows, qlengths = blocks(test[:args.eval_bytes], args.seq_len) if quick else (rows, lengths)
    long_eval = blocks(test[:args.eval_long], args.eval_long) if args.eval_long else None

    c = make_config(args.embed_dim, args.ffn_dim, args.layers, args.heads, args.projection_length,
                    normalize_before=not args.post_norm, tie_kv=not args.no_tie_kv, activation=args.activation)
    if args.decay:
        c["decay"] = [float(g) for g in args.decay.split(",")]
    if args.conv_width:
        c["conv_width"] = args.conv_width
    if args.local_window:
        c["local_window"] = args.local_window
    if args.no_positions:
        c["no_token_positional_embeddings"] = True
    model = LunaCausalLM(c).to(device)
    if args.init_from and not args.resume:
        init, _ = load(args.init_from, torch.float32, device)
        missing, unexpected = model.load_state_dict(init.state_dict(), strict=False)
        if unexpected or any(not k.endswith("conv.weight") for k in missing):
            sys.exit(f"{args.init_from} does not fit this config: missing {missing}, unexpected {unexpected}")
        print(f"initialised from {args.init_from} (new: {missing or 'nothing'})", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config {json.dumps(c)}", flush=True)
    print(f"{n_params} parameters; train {len(train)} bytes, test {len(test)} bytes; device {device}, "
          f"{torch.get_num_threads()} threads", flush=True)

    # (weight decay on matrices, not on P or the convolution, which starts as the identity)
    def decays(n, p):
        return p.dim() == 2 and n != "projected_embeddings" and not n.endswith("conv.weight")

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-9)

    log_path = args.log or args.out.with_suffix(".csv")
    ckpt_path = args.ckpt or dd / (args.out.stem + ".ckpt.pt")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    step, elapsed0, bytes_seen = 0, 0.0, 0
    if args.resume:
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["config"] != c:
            sys.exit(f"{ckpt_path} holds a different config: resume with the flags of the run that wrote it")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed0 = ck["step"], ck["seconds"]
        bytes_seen = ck.get("bytes_seen", step * args.batch * args.seq_len)
        rng.bit_generator.state = ck["rng"]
        print(f"resumed from {ckpt_path} at step {step} ({elapsed0 / 60:.1f} min)", flush=True)
    header = ["step", "bytes_seen", "minutes", "lr", "train_bpb", "test_bpb", "test_bytes", "test_long_bpb"]
    if args.resume and log_path.exists():
        # A curve written before the long-window column existed gets it, empty.
        old_rows = list(csv.reader(open(log_path, newline="")))
        if old_rows and old_rows[0] != header:
            with open(log_path, "w", newline="") as f:
                csv.writer(f).writerows([header] + [r + [""] * (len(header) - len(r)) for r in old_rows[1:]])
    log = open(log_path, "a" if args.resume else "w", newline="")
    writer = csv.writer(log)
    if not args.resume:
        writer.writerow(header)

    budget = args.minutes * 60 if args.minutes else None
    t_start = time.time() - elapsed0
    stop = {"flag": False}

    def on_signal(signum, frame):
        print(f"signal {signum}: finishing after this step", flush=True)
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    storage = torch.float16 if args.dtype == "f16" else torch.float32
    train_meta = {"amp": args.amp, "corpus": "python3.11-doc reST sources (tools/train/prepare_corpus.py)", "seq_len": args.seq_len,
                  "batch": args.batch, "lr": args.lr, "seed": args.seed, "parameters": n_params,
                  "argv": " ".join(sys.argv[1:])}

    def save(step, bpb):
        meta = dict(train_meta, steps=step, bytes_seen=bytes_seen,
                    minutes=round((time.time() - t_start) / 60, 2), test_bpb=bpb)
        tmp = args.out.with_name(args.out.name + ".tmp")
        export(model, tmp, storage, {"luna.train": meta})
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.out)
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        torch.save({"config": c, "model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                    "bytes_seen": bytes_seen, "seconds": time.time() - t_start, "rng": rng.bit_generator.state}, tmp)
        os.replace(tmp, ckpt_path)

    def progress(step):
        p = step / args.steps
        if budget:
            p = max(p, (time.time() - t_start) / budget)
        return min(p, 1.0)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        p = progress(step)
        return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))

    run_bits, run_bytes = 0.0, 0
    last_eval = step
    last_bpb = None
    model.train()
    T, Bsz = args.seq_len, args.batch
    while True:
        if args.stop_at is not None and step >= args.stop_at:
            stop["flag"] = True
        done = stop["flag"] or step >= args.steps or (budget and time.time() - t_start >= budget)
        if done or step - last_eval >= args.eval_every or (step == 0 and not args.resume):
            full = done and not stop["flag"]  # a stop on a signal or --stop-at saves quickly, with the short evaluation
            bits, count = eval_bits(model, rows if full else qrows, lengths if full else qlengths, 64, device, args.chunk)
            last_bpb = bits / count
            long_bpb = ""
            if long_eval is not None:
                lbits, lcount = eval_bits(model, long_eval[0], long_eval[1], 1, device, args.chunk)
                long_bpb = f"{lbits / lcount:.4f}"
            train_bpb = run_bits / run_bytes if run_bytes else float("nan")
            minutes = (time.time() - t_start) / 60
            writer.writerow([step, bytes_seen, f"{minutes:.2f}", f"{lr_at(step):.3e}", f"{train_bpb:.4f}",
                             f"{last_bpb:.4f}", count, long_bpb])
            log.flush()
            print(f"step {step} {minutes:.1f} min: train {train_bpb:.4f} bpb, test {last_bpb:.4f} bpb "
                  f"({count} bytes{', all' if full or not quick else ''})"
                  + (f", first {args.eval_long} test bytes as one sequence {long_bpb} bpb" if long_bpb else ""), flush=True)
            run_bits, run_bytes = 0.0, 0
            save(step, last_bpb)
            last_eval = step
            if done:
                break
        long_step = args.long_len and step % args.long_every == args.long_every - 1
        wlen, wcount = (args.long_len, max(1, Bsz * T // args.long_len)) if long_step else (T, Bsz)
        starts = rng.integers(0, len(train) - wlen, size=wcount)
        win = np.stack([train[s:s + wlen] for s in starts]).astype(np.int64) + OFFSET
        x = torch.from_numpy(np.concatenate([np.full((wcount, 1), BOS), win], axis=1)).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            logits, _ = model(x[:, :-1], chunk=args.chunk)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        bytes_seen += wcount * wlen
        run_bits += loss.item() * wcount * wlen / math.log(2)
        run_bytes += wcount * wlen
        if step % 100 == 0:
            el = time.time() - t_start
            print(f"step {step} {el / 60:.1f} min lr {lr_at(step):.2e} loss {loss.item() / math.log(2):.4f} bpb "
                  f"{bytes_seen / el:.0f} bytes/s", flush=True)
    if stop["flag"] and step < args.steps:
        print(f"stopped at step {step} of {args.steps}: wrote {args.out} and {ckpt_path}; continue with the same "
              f"flags and --resume", flush=True)
    else:
        print(f"wrote {args.out} ({args.dtype}), test {last_bpb:.4f} bpb on {count} bytes in blocks of {T}; "
              f"learning curve {log_path}", flush=True)


if __name__ == "__main__":
    main()
