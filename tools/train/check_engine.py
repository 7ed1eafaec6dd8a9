#!/usr/bin/env python3
"""Checks the trainer's model against the causal recurrence of docs/luna.md and against the engine.

1. The chunked parallel form of `luna_model.causal_luna` against a plain
   token-by-token recurrence (docs/luna.md, "Causal attention"; float64), for several chunk sizes,
   with and without the per-head decay of "Local context", and a sequence
   scored in two calls (carrying the state) against one call.
2. Small random models (pre-norm and post-norm, tied and separate K/V, with
   and without the local-context extension) exported to model files, run
   through `luna forward --device cpu` (the engine's float64 reference), and
   their logits compared with PyTorch's (float64): they must agree to 1e-5
   (relative to the largest logit, when over 1). With --model, the same check on a given model file instead.

    python tools/train/check_engine.py [--luna target/release/luna] [--model M.safetensors]
"""

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from luna_model import BOS, OFFSET, LunaCausalLM, causal_luna, export, load, make_config, softplus_ln2  # noqa: E402

torch.set_num_threads(2)


def recurrence(q, k, v, a, gamma=1.0):
    """The step-by-step form (docs/luna.md, "Causal attention", and with gamma < 1
    "Local context") for one head: q, k, v [n, dh], a [n, l]."""
    n, dh = q.shape
    l = a.shape[1]
    sk = torch.zeros(dh, l, dtype=q.dtype)
    sv = torch.zeros(l, dh, dtype=q.dtype)
    z = 0.0
    out = []
    for t in range(1, n + 1):
        sk = gamma * sk + torch.outer(k[t - 1], a[t - 1])
        sv = gamma * sv + torch.outer(a[t - 1], v[t - 1])
        z = gamma * z + 1
        alpha = torch.softmax(q[t - 1] @ sk / z, dim=0)
        out.append(alpha @ sv / z)
    return torch.stack(out)


def check_parallel_form():
    g = torch.Generator().manual_seed(1)
    B, H, n, dh, l = 2, 3, 101, 8, 5
    q, k, v = (torch.randn(B, H, n, dh, generator=g, dtype=torch.float64) for _ in range(3))
    a = softplus_ln2(torch.randn(B, H, n, l, generator=g, dtype=torch.float64) * 3)
    worst = 0.0
    for decay in (None, [0.5, 0.96875, 1.0]):
        gammas = decay or [1.0] * H
        want = torch.stack([torch.stack([recurrence(q[b, h], k[b, h], v[b, h], a[b, h], gammas[h]) for h in range(H)])
                            for b in range(B)])
        for chunk in (1, 7, 64, 128):
            got, _ = causal_luna(q, k, v, a, 0, chunk=chunk, decay=decay)
            worst = max(worst, (got - want).abs().max().item())
        # In two calls with the state carried over.
        o1, (sk, sv) = causal_luna(q[:, :, :40], k[:, :, :40], v[:, :, :40], a[:, :, :40], 0, chunk=16, decay=decay)
        o2, _ = causal_luna(q[:, :, 40:], k[:, :, 40:], v[:, :, 40:], a[:, :, 40:], 40, sk, sv, chunk=16, decay=decay)
        worst = max(worst, (torch.cat([o1, o2], dim=2) - want).abs().max().item())
    print(f"parallel form vs recurrence (with and without decay): max |diff| {worst:.2e}")
    return worst < 1e-10


def check_model_states():
    d = 0.0
    for extra in ({}, dict(decay=[0.5, 0.9, 0.99, 1.0], conv_width=4, local_window=8, no_token_positional_embeddings=True)):
        c = dict(make_config(32, 48, 2, 4, 5), **extra)
        m = LunaCausalLM(c).double().eval()
        randomise(m, 3)
        x = torch.randint(OFFSET, OFFSET + 256, (2, 90))
        with torch.no_grad():
            whole, _ = m(x, chunk=16)
            a, s = m(x[:, :33], chunk=16)
            b, s = m(x[:, 33:34], states=s, chunk=16)
            e, _ = m(x[:, 34:], states=s, chunk=16)
        d = max(d, (torch.cat([a, b, e], 1) - whole).abs().max().item())
    print(f"model in three calls vs one (with and without the extension): max |diff| {d:.2e}")
    return d < 1e-10


def randomise(model, seed):
    """Every parameter random (not the training init), so that no term can hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("layer_norm.weight"):
                p.copy_(1 + 0.3 * r)
            elif p.dim() == 1:
                p.copy_(0.2 * r)
            else:
                p.copy_(r * (1.0 / math.sqrt(p.shape[-1])))


def run_engine(luna, model_path, tokens, tmp):
    from safetensors.torch import load_file, save_file

    inp, out = Path(tmp) / "tokens.safetensors", Path(tmp) / "logits.safetensors"
    save_file({"tokens": tokens.to(torch.int32).contiguous()}, str(inp))
    subprocess.run([luna, "forward", "--device", "cpu", "--model", str(model_path), "--input", str(inp),
                    "--output", str(out)], check=True, capture_output=True)
    return load_file(str(out))["logits"].double()


def compare(luna, model_path, tmp, n=150, label=""):
    model, _ = load(model_path, torch.float64)
    V = model.c["vocab_size"]
    g = torch.Generator().manual_seed(7)
    tokens = torch.cat([torch.full((2, 1), BOS), torch.randint(OFFSET, V, (2, n - 1), generator=g)], dim=1)
    with torch.no_grad():
        want, _ = model(tokens, chunk=64)
    got = run_engine(luna, model_path, tokens, tmp)
    diff = (got - want).abs().max().item()
    scale = want.abs().max().item()
    ok = diff <= 1e-5 * max(1.0, scale)
    print(f"{label or model_path}: engine vs PyTorch logits [2, {n}, {V}]: max |diff| {diff:.2e} "
          f"(max |logit| {scale:.1f}) {'ok' if ok else 'FAIL'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--luna", default=str(Path(__file__).resolve().parents[2] / "target" / "release" / "luna"))
    ap.add_argument("--model", type=Path, default=None, help="check this model file instead of random ones")
    args = ap.parse_args()
    ok = check_parallel_form() and check_model_states()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            ok &= compare(args.luna, args.model, tmp, n=300)
        else:
            local = dict(decay=[0.875, 0.998046875, 1.0], conv_width=4)
            cases = [
                ("pre-norm, tie_kv, gelu", dict(normalize_before=True, tie_kv=True, activation="gelu"), {}),
                ("post-norm, separate k/v, relu", dict(normalize_before=False, tie_kv=False, activation="relu"), {}),
                ("pre-norm, decay, conv 4", dict(normalize_before=True, tie_kv=True, activation="gelu"), local),
                # (rates off the float32 grid: both sides round them to float32)
                ("post-norm, decay 0.9/0.99/0.999, conv 4, no token positions", dict(normalize_before=False, tie_kv=False, activation="relu"),
                 dict(local, decay=[0.9, 0.99, 0.999], no_token_positional_embeddings=True)),
            ]
            for i, (label, kw, extra) in enumerate(cases):
                c = dict(make_config(embed_dim=24, ffn_embed_dim=40, num_layers=2, num_heads=3, projection_length=5, **kw), **extra)
                m = LunaCausalLM(c)
                randomise(m, i)
                for dtype, name in ((torch.float32, "f32"), (torch.float16, "f16")):
                    path = Path(tmp) / f"m{i}-{name}.safetensors"
                    export(m, path, dtype)
                    ok &= compare(args.luna, path, tmp, label=f"{label} ({name} file)")
    print("all checks passed" if ok else "CHECKS FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
