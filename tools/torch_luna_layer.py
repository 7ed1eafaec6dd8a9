#!/usr/bin/env python3
"""Time one Luna encoder layer in PyTorch eager, shaped as `luna bench --op layer` shapes it.

The same computation as the engine's timed pass (docs/luna.md, src/bench/mod.rs
`luna_config`, src/reference/mod.rs `embed` and `encoder_layer`):

  - an encoder of one post-norm layer: vocab 1000, width d (default 256), FFN 4d,
    H = Hp = heads (default 4), projection length l (default 16,128,256 like the
    bench), separate pack and unpack K/V projections (tie_kv false), exact-erf GELU,
    sinusoidal positions, embed_scale sqrt(d), padding id 1, no padding in the batch;
  - embedding: X = sqrt(d)*embed_tokens[tokens] + S[positions] (positions 2..n+1),
    P = sqrt(d)*projected_embeddings + S[0..l-1];
  - pack (P reads X): Yp = softmax(Qp Kp^T / sqrt(dp)) Vp per head, Qp = pq_proj(P),
    Kp = pk_proj(X), Vp = pv_proj(X), no output projection;
  - unpack (X reads the packed sequence): Y = out_proj(softmax(Q K^T / sqrt(dh)) V),
    Q = q_proj(X), K = k_proj(Yp), V = v_proj(Yp);
  - X = LN(X + Y); P = LN(P + Yp); X = LN(X + fc2(gelu(fc1(X)))).

Random weights, float32 (TF32 off unless --tf32), CUDA. Each point: warm-up runs,
then --repeats runs, each between torch.cuda.synchronize() calls; the median is
reported. Prints a CSV on stdout (and to --out): n, l, d, heads, batch, ms (median),
min_ms, max_ms, tokens_per_s, gflops (the bench's FLOP count, src/bench/mod.rs
`luna_layer_flops`), peak_mib (torch.cuda.max_memory_allocated, weights included),
attention, skipped.

Exits 0 with a message on stderr when PyTorch or CUDA is missing (use --device cpu
to run it on the CPU anyway, e.g. to check the script).
"""

import argparse
import math
import statistics
import sys
import time

VOCAB = 1000
PAD = 1
EPS = 1e-5


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="4096,8192,16384,32768,65536", help="sequence lengths, comma-separated")
    ap.add_argument("--projection-length", "--l", dest="l", default="16,128,256", help="projection lengths l, comma-separated")
    ap.add_argument("--d", type=int, default=256, help="model width (luna bench's default)")
    ap.add_argument("--heads", type=int, default=4, help="heads of pack and unpack (luna bench's default)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per point (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs before them")
    ap.add_argument("--attention", choices=["sdpa", "explicit"], default="sdpa",
                    help="sdpa: torch.nn.functional.scaled_dot_product_attention; explicit: softmax(QK^T)V written out")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matrix products (default: strict float32)")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="skip a point predicted (linearly in n from the previous one) to take longer than this in all")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--out", help="also write the CSV to this file")
    return ap.parse_args()


def ints(s):
    return [int(v) for v in s.split(",") if v.strip()]


def skip(message):
    print(f"torch_luna_layer: skipped: {message}", file=sys.stderr)
    sys.exit(0)


def main():
    args = parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        skip("PyTorch is not installed here")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        skip(f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    if args.d % args.heads != 0 or args.d < 2:
        sys.exit("--d must be a multiple of --heads")
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def attend(q, k, v, heads):
        """Multi-head softmax attention, no mask: [B, m, d] against [B, s, d] -> [B, m, d]."""
        b, m, d = q.shape
        s = k.shape[1]
        w = d // heads
        qh = q.view(b, m, heads, w).transpose(1, 2)
        kh = k.view(b, s, heads, w).transpose(1, 2)
        vh = v.view(b, s, heads, w).transpose(1, 2)
        scale = w ** -0.5
        if args.attention == "sdpa":
            o = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
        else:
            o = torch.softmax((qh @ kh.transpose(-1, -2)) * scale, dim=-1) @ vh
        return o.transpose(1, 2).reshape(b, m, d)

    class LunaLayer(torch.nn.Module):
        """One post-norm Luna encoder layer, the authors' tensor names."""

        def __init__(self, d, heads, ffn):
            super().__init__()
            self.heads = heads
            lin = torch.nn.Linear
            self.q_proj, self.pq_proj, self.out_proj = lin(d, d), lin(d, d), lin(d, d)
            self.pk_proj, self.pv_proj = lin(d, d), lin(d, d)
            self.k_proj, self.v_proj = lin(d, d), lin(d, d)
            self.fc1, self.fc2 = lin(d, ffn), lin(ffn, d)
            self.self_attn_layer_norm = torch.nn.LayerNorm(d, eps=EPS)
            self.self_atten_proj_layer_norm = torch.nn.LayerNorm(d, eps=EPS)
            self.final_layer_norm = torch.nn.LayerNorm(d, eps=EPS)

        def forward(self, x, p):
            # Pack: P reads the sequence (no output projection on Yp).
            yp = attend(self.pq_proj(p), self.pk_proj(x), self.pv_proj(x), self.heads)
            # Unpack: every token reads the packed sequence.
            y = self.out_proj(attend(self.q_proj(x), self.k_proj(yp), self.v_proj(yp), self.heads))
            x = self.self_attn_layer_norm(x + y)
            p = self.self_atten_proj_layer_norm(p + yp)
            x = self.final_layer_norm(x + self.fc2(F.gelu(self.fc1(x))))  # exact-erf GELU
            return x, p

    def sinusoid_rows(rows, d):
        """Rows `rows` of the sinusoid table (docs/luna.md, "Positions"), float64 then float32."""
        k = d // 2
        j = torch.arange(k, dtype=torch.float64)
        f = torch.exp(-j * math.log(10000.0) / (k - 1)) if k > 1 else torch.ones(1, dtype=torch.float64)
        a = rows.to(torch.float64)[:, None] * f[None, :]
        s = torch.cat([torch.sin(a), torch.cos(a)], dim=1)
        if d % 2:
            s = torch.cat([s, torch.zeros(len(rows), 1, dtype=torch.float64)], dim=1)
        return s.to(torch.float32)

    class LunaEncoder(torch.nn.Module):
        """Embedding of X and P, then one layer: what `Engine::time_encoder` times."""

        def __init__(self, d, heads, l, n):
            super().__init__()
            self.scale = math.sqrt(d)
            self.embed_tokens = torch.nn.Embedding(VOCAB, d)
            with torch.no_grad():
                self.embed_tokens.weight.normal_(0.0, d ** -0.5)
            self.projected_embeddings = torch.nn.Parameter(torch.randn(l, d) * d ** -0.5)
            # Position tables, computed once (the engine caches its table per model).
            self.register_buffer("token_pos", sinusoid_rows(torch.arange(PAD + 1, PAD + 1 + n), d))
            self.register_buffer("proj_pos", sinusoid_rows(torch.arange(l), d))
            self.layer = LunaLayer(d, heads, 4 * d)

        def forward(self, tokens):
            x = self.scale * self.embed_tokens(tokens) + self.token_pos[: tokens.shape[1]]
            p = (self.scale * self.projected_embeddings + self.proj_pos).expand(tokens.shape[0], -1, -1)
            return self.layer(x, p)

    def flops(n, l, d, f):
        # src/bench/mod.rs luna_layer_flops (kv = 2d, untied).
        kv = 2 * d
        return 2 * n * d * (d + kv) + 2 * l * d * d + 2 * l * d * kv + 2 * n * d * d + 8 * l * n * d + 4 * n * d * f

    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"torch {torch.__version__} on {name}; float32 matmul precision "
          f"{'tf32 allowed' if args.tf32 else 'highest (no TF32)'}; attention {args.attention}; "
          f"d={args.d} heads={args.heads} batch={args.batch} warmup={args.warmup} repeats={args.repeats}",
          file=sys.stderr)

    header = "n,l,d,heads,batch,ms,min_ms,max_ms,tokens_per_s,gflops,peak_mib,attention,skipped"
    rows = [header]
    print(header, flush=True)

    def emit(n, l, times=None, peak=0.0, skipped=""):
        if times:
            times = sorted(times)
            med = statistics.median(times)
            toks = n * args.batch / med
            gf = flops(n, l, args.d, 4 * args.d) * args.batch / med * 1e-9
            row = f"{n},{l},{args.d},{args.heads},{args.batch},{med * 1e3:.4f},{times[0] * 1e3:.4f},{times[-1] * 1e3:.4f},{toks:.1f},{gf:.2f},{peak:.1f},{args.attention},"
        else:
            row = f"{n},{l},{args.d},{args.heads},{args.batch},,,,,,,{args.attention},\"{skipped}\""
        rows.append(row)
        print(row, flush=True)

    torch.manual_seed(0)
    failures = 0
    for l in ints(args.l):
        last = None  # (n, median seconds) of the previous measured point
        for n in ints(args.n):
            if last is not None:
                predicted = last[1] * n / last[0] * (args.warmup + args.repeats)
                if predicted > args.max_seconds:
                    emit(n, l, skipped=f"predicted {predicted:.0f} s over --max-seconds {args.max_seconds:.0f}")
                    continue
            model = tokens = out = None
            try:
                model = LunaEncoder(args.d, args.heads, l, n).to(device).eval()
                tokens = torch.randint(PAD + 1, VOCAB, (args.batch, n), device=device)
                with torch.inference_mode():
                    sync()
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    for _ in range(args.warmup):
                        model(tokens)
                    times = []
                    for _ in range(max(1, args.repeats)):
                        sync()
                        t0 = time.perf_counter()
                        out = model(tokens)
                        sync()
                        times.append(time.perf_counter() - t0)
                    if not all(bool(torch.isfinite(t).all()) for t in out):
                        raise RuntimeError("non-finite output")
                    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else 0.0
                emit(n, l, times, peak)
                last = (n, statistics.median(times))
            except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
                msg = str(e).splitlines()[0][:120].replace('"', "'")
                if "out of memory" not in msg:
                    failures += 1
                emit(n, l, skipped=msg)
            finally:
                del model, tokens, out
                if cuda:
                    torch.cuda.empty_cache()

    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(rows) + "\n")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
