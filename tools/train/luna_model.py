"""The causal Luna LM of docs/luna.md ("Causal attention", "The causal LM") in PyTorch.

Written from that definition, independently of the engine. Parameter names
are the model file's tensor names (fairseq's; docs/luna.md, "The model
file"), so `state_dict()` is the model file's tensor set. The causal attention is computed in its parallel form over chunks of C
tokens: per chunk the sums of `K (outer) A` and `A (outer) V`, an exclusive
prefix sum over chunks, and inside a chunk the masked C x C products. Nothing
of size n x n or n x dh x l is formed, and an optional state carries
`(Sk, Sv, t)` from one call to the next, so a document of any length can be
scored in pieces with the same numbers as in one pass.
"""

import json
import math
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

LN2 = math.log(2.0)

# The byte tokenizer that `luna init-random --tokenizer bytes` picks for padding_idx 1.
BOS, PAD, EOS, OFFSET = 0, 1, 2, 3
TOKENIZER = {"kind": "bytes", "offset": OFFSET, "pad": PAD, "bos": BOS, "eos": EOS}

CONFIG_KEYS = [
    "model", "vocab_size", "embed_dim", "ffn_embed_dim", "num_layers", "num_heads", "num_pheads",
    "projection_length", "max_positions", "padding_idx", "normalize_before", "tie_kv",
    "tie_layer_weights", "layernorm_embedding", "dynamic_projection", "learned_pos",
    "tie_output_embedding", "activation", "embed_scale", "layer_norm_eps",
    # this project's local-context extension (docs/luna.md, "Local context"), written only when used
    "decay", "conv_width", "local_window", "no_token_positional_embeddings",
]


def make_config(embed_dim=256, ffn_embed_dim=1024, num_layers=4, num_heads=4, projection_length=16,
                normalize_before=True, tie_kv=True, activation="gelu", max_positions=4096):
    """A complete `luna.config` for a byte-level causal LM with sinusoidal positions."""
    return {
        "model": "causal_lm",
        "vocab_size": 256 + OFFSET,
        "embed_dim": embed_dim,
        "ffn_embed_dim": ffn_embed_dim,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_pheads": num_heads,
        "projection_length": projection_length,
        "max_positions": max_positions,
        "padding_idx": PAD,
        "normalize_before": normalize_before,
        "tie_kv": tie_kv,
        "tie_layer_weights": False,
        "layernorm_embedding": False,
        "dynamic_projection": False,
        "learned_pos": False,
        "tie_output_embedding": True,
        "activation": activation,
        "embed_scale": math.sqrt(embed_dim),
        "layer_norm_eps": 1e-5,
    }


# The engine's bounds on the local-context extension (src/config.rs).
MIN_DECAY = 2.0 ** -16
MAX_CONV_WIDTH = 16


def to_float32(g):
    """The float32 number nearest g, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", g))[0]


def check_config(c):
    """This trainer implements the causal LM of docs/luna.md with these options only."""
    if c["model"] != "causal_lm":
        raise ValueError("only model = causal_lm")
    for key in ("tie_layer_weights", "layernorm_embedding", "learned_pos"):
        if c.get(key, False):
            raise ValueError(f"{key} = true is not supported by this trainer")
    if c["embed_dim"] % c["num_heads"]:
        raise ValueError("embed_dim must be divisible by num_heads")
    if c.get("activation", "relu") not in ("relu", "gelu"):
        raise ValueError("activation must be relu or gelu")
    decay = c.get("decay")
    if decay is not None and (len(decay) != c["num_heads"] or not all(MIN_DECAY <= g <= 1 for g in decay)):
        raise ValueError("decay must hold num_heads rates in [2^-16, 1] (the engine's bounds)")
    if not 0 <= c.get("conv_width", 0) <= MAX_CONV_WIDTH:
        raise ValueError(f"conv_width must lie in [0, {MAX_CONV_WIDTH}] (the engine's bound)")


def sinusoid_rows(rows: torch.Tensor, d: int, dtype=torch.float64) -> torch.Tensor:
    """Sinusoid table rows `[sin(r f_0..f_{k-1}), cos(r f_0..f_{k-1})]` (+ a zero column if d is odd)."""
    k = d // 2
    j = torch.arange(k, dtype=torch.float64)
    f = torch.exp(-j * math.log(10000.0) / (k - 1)) if k > 1 else torch.ones(1, dtype=torch.float64)
    ang = rows.to(torch.float64).unsqueeze(-1) * f
    out = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    if d % 2:
        out = F.pad(out, (0, 1))
    return out.to(dtype)


def softplus_ln2(z):
    """ln(1 + exp(z ln 2)) / ln 2."""
    return F.softplus(z, beta=LN2, threshold=20.0)


def in_chunks(chunk, *xs):
    """[B, H, n, w] tensors as [B, H, N, C, w]: N chunks of C = min(chunk, n) rows, the last one zero-padded."""
    B, H, n, _ = xs[0].shape
    C = min(chunk, n)
    N = -(-n // C)
    if N * C > n:
        xs = [F.pad(x, (0, 0, 0, N * C - n)) for x in xs]
    return C, N, [x.reshape(B, H, N, C, x.shape[-1]) for x in xs]


def causal_luna(q, k, v, a, t0, sk0=None, sv0=None, chunk=64, decay=None):
    """Causal Luna attention, parallel form.

    q, k, v: [B, H, n, dh] (q already scaled by dh^-0.5); a: [B, H, n, l] pack weights.
    t0: tokens already seen (the state's count); sk0 [B, H, dh, l], sv0 [B, H, l, dh] the state or None.
    decay: None (the authors' form) or [H] per-head decay rates in (0, 1] (docs/luna.md,
    "Local context"): the running sums decay by gamma per token and 1/t becomes 1/Z_t.
    Returns o [B, H, n, dh] and the state after the last token.
    """
    if decay is not None:
        return causal_luna_decay(q, k, v, a, t0, sk0, sv0, chunk, decay)
    B, H, n, dh = q.shape
    C, N, (q, k, v, a) = in_chunks(chunk, q, k, v, a)
    skc = k.transpose(-1, -2) @ a          # [B,H,N,dh,l]  sum_i K_i (outer) A_i per chunk
    svc = a.transpose(-1, -2) @ v          # [B,H,N,l,dh]  sum_i A_i (outer) V_i per chunk
    sk_inc = torch.cumsum(skc, dim=2)
    sv_inc = torch.cumsum(svc, dim=2)
    sk_prev = sk_inc - skc
    sv_prev = sv_inc - svc
    if sk0 is not None:
        sk_prev = sk_prev + sk0.unsqueeze(2)
        sv_prev = sv_prev + sv0.unsqueeze(2)
    t = (t0 + torch.arange(1, N * C + 1, dtype=q.dtype, device=q.device)).reshape(N, C, 1)
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    g = (q @ k.transpose(-1, -2)).masked_fill(~mask, 0.0)            # [B,H,N,C,C]  Q_t . K_i, i <= t
    scores = (q @ sk_prev + g @ a) / t                                # Q_t . Sk_t / t
    alpha = torch.softmax(scores, dim=-1)                             # [B,H,N,C,l]
    w = (alpha @ a.transpose(-1, -2)).masked_fill(~mask, 0.0)         # alpha_t . A_i, i <= t
    o = (alpha @ sv_prev + w @ v) / t                                 # alpha_t . Sv_t / t
    o = o.reshape(B, H, N * C, dh)[:, :, :n]
    sk_end = sk_inc[:, :, -1] + (sk0 if sk0 is not None else 0)
    sv_end = sv_inc[:, :, -1] + (sv0 if sv0 is not None else 0)
    return o, (sk_end, sv_end)


def decay_norm(t, lg):
    """Z_t = sum_{i<t} gamma^i = (1 - gamma^t) / (1 - gamma), and t where gamma = 1 (lg = ln gamma)."""
    safe = torch.where(lg < 0, lg, torch.full_like(lg, -1.0))
    z = torch.expm1(t * safe) / torch.expm1(safe)
    return torch.where(lg < 0, z, t.expand_as(z))


def causal_luna_decay(q, k, v, a, t0, sk0, sv0, chunk, decay):
    """causal_luna with per-head decay: Sk_t = gamma Sk_{t-1} + K_t (outer) A_t (Sv likewise),
    alpha_t = softmax(Q_t . Sk_t / Z_t), O_t = alpha_t . Sv_t / Z_t."""
    B, H, n, dh = q.shape
    C, N, (q, k, v, a) = in_chunks(chunk, q, k, v, a)
    dev, dt = q.device, q.dtype
    lg = torch.log(torch.as_tensor(decay, dtype=torch.float64, device=dev)).view(H, 1, 1)  # [H,1,1]
    i = torch.arange(C, dtype=torch.float64, device=dev)
    lag = i.view(C, 1) - i.view(1, C)
    D = torch.where(lag >= 0, torch.exp(lg * lag.clamp(min=0)), torch.zeros((), dtype=torch.float64, device=dev))
    D = D.to(dt)                                                       # [H,C,C]  gamma^(t-s), s <= t
    into = torch.exp(lg * (i + 1).view(1, C, 1)).to(dt)                # [H,C,1]  gamma^(i+1): the prefix state at row i
    to_end = torch.exp(lg * (C - 1 - i).view(1, C, 1)).to(dt)          # [H,C,1]  a row's weight at its chunk's end
    skc = k.transpose(-1, -2) @ (a * to_end.unsqueeze(1))             # [B,H,N,dh,l] chunk sums, decayed to the chunk's end
    svc = (a * to_end.unsqueeze(1)).transpose(-1, -2) @ v             # [B,H,N,l,dh]
    c = torch.arange(N, dtype=torch.float64, device=dev)
    cl = (c.view(N, 1) - 1 - c.view(1, N))
    M = torch.where(cl >= 0, torch.exp(lg * C * cl.clamp(min=0)), torch.zeros((), dtype=torch.float64, device=dev)).to(dt)
    sk_prev = torch.einsum("hnm,bhmxy->bhnxy", M, skc)                # state before each chunk
    sv_prev = torch.einsum("hnm,bhmxy->bhnxy", M, svc)
    if sk0 is not None:
        w0 = torch.exp(lg.view(H, 1) * C * c.view(1, N)).to(dt).view(1, H, N, 1, 1)
        sk_prev = sk_prev + w0 * sk0.unsqueeze(2)
        sv_prev = sv_prev + w0 * sv0.unsqueeze(2)
    t = (t0 + torch.arange(1, N * C + 1, dtype=torch.float64, device=dev)).reshape(1, N, C, 1)
    z = decay_norm(t, lg.view(H, 1, 1, 1)).to(dt)                      # [H,N,C,1]
    g = (q @ k.transpose(-1, -2)) * D.unsqueeze(1)                     # [B,H,N,C,C]  gamma^(t-s) Q_t . K_s
    scores = (into.unsqueeze(1) * (q @ sk_prev) + g @ a) / z
    alpha = torch.softmax(scores, dim=-1)
    w = (alpha @ a.transpose(-1, -2)) * D.unsqueeze(1)
    o = (into.unsqueeze(1) * (alpha @ sv_prev) + w @ v) / z
    o = o.reshape(B, H, N * C, dh)[:, :, :n]
    # The state after the last real token: the last chunk's prefix and its r real rows.
    r = n - (N - 1) * C
    last = torch.exp(lg * (r - 1 - i).clamp(min=0).view(1, C, 1)) * (i < r).view(1, C, 1)
    last = last.to(dt)
    kr, ar, vr = k[:, :, -1], a[:, :, -1] * last, v[:, :, -1]
    gr = torch.exp(lg.view(H, 1, 1) * r).to(dt)
    sk_end = gr * sk_prev[:, :, -1] + kr.transpose(-1, -2) @ ar
    sv_end = gr * sv_prev[:, :, -1] + ar.transpose(-1, -2) @ vr
    return o, (sk_end, sv_end)


def local_attention(q, k, v, window, hist=None):
    """Causal sliding-window softmax attention over the last `window` tokens (the current one included).

    q, k, v [B, H, n, dh]; hist: (k, v) of up to window - 1 tokens before these, or None.
    Returns o [B, H, n, dh] and the (k, v) of the last window - 1 tokens (for the next call).
    """
    B, H, n, dh = q.shape
    m = 0
    if hist is not None:
        k = torch.cat([hist[0], k], dim=2)
        v = torch.cat([hist[1], v], dim=2)
        m = hist[0].shape[2]
    C = window
    N = -(-n // C)
    pad = N * C - n
    # keys of chunk j: the C tokens before it and its own C (padded in front with zeros).
    kk = F.pad(k, (0, 0, C - m, pad))
    vv = F.pad(v, (0, 0, C - m, pad))
    qq = F.pad(q, (0, 0, 0, pad)).reshape(B, H, N, C, dh)
    kw = torch.cat([kk[:, :, :-C].reshape(B, H, N, C, dh), kk[:, :, C:].reshape(B, H, N, C, dh)], dim=3)
    vw = torch.cat([vv[:, :, :-C].reshape(B, H, N, C, dh), vv[:, :, C:].reshape(B, H, N, C, dh)], dim=3)
    s = qq @ kw.transpose(-1, -2)                                      # [B,H,N,C,2C]
    i = torch.arange(C, device=q.device).view(C, 1)
    j = torch.arange(2 * C, device=q.device).view(1, 2 * C)
    ok = (j - C <= i) & (j - C > i - window)
    # keys before the sequence's first token (front padding) are not there
    pos = torch.arange(N, device=q.device).view(N, 1, 1) * C + j.view(1, 1, 2 * C) - C   # key index among this call's rows
    ok = ok.view(1, C, 2 * C) & (pos >= -m)
    s = s.masked_fill(~ok, float("-inf"))
    o = torch.softmax(s, dim=-1) @ vw
    o = o.reshape(B, H, N * C, dh)[:, :, :n]
    keep = window - 1
    return o, (k[:, :, -keep:], v[:, :, -keep:]) if keep else None


class CausalAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["embed_dim"]
        self.h = c["num_heads"]
        self.dh = d // self.h
        self.tie_kv = c.get("tie_kv", False)
        # This project's local-context extension (docs/luna.md, "Local context"); off by default.
        decay = c.get("decay")
        # Rounded to float32, as the engine reads them (src/config.rs), so both use the same rates.
        decay = None if decay is None else [to_float32(g) for g in decay]
        self.decay = None if decay is None or all(g == 1 for g in decay) else decay
        self.conv_width = c.get("conv_width", 0)
        self.local_window = c.get("local_window", 0)
        self.q_proj = nn.Linear(d, d)
        self.pq_proj = nn.Linear(d, d)
        self.pc_proj = nn.Linear(d, d)
        if self.tie_kv:
            self.c_proj = nn.Linear(d, d)
        else:
            self.k_proj = nn.Linear(d, d)
            self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        if self.conv_width:
            # conv.weight[:, j] multiplies the input conv_width - 1 - j tokens back; starts as the identity.
            self.conv = nn.Module()
            self.conv.weight = nn.Parameter(torch.zeros(d, self.conv_width))
            with torch.no_grad():
                self.conv.weight[:, -1] = 1.0

    def heads(self, x):  # [B, n, d] -> [B, H, n, dh]
        B, n, _ = x.shape
        return x.view(B, n, self.h, self.dh).transpose(1, 2)

    def causal_conv(self, x, hist):
        """u_t = sum_j conv.weight[:, j] * x_{t - (k-1) + j}, zeros before the sequence; hist: earlier rows."""
        B, n, d = x.shape
        k = self.conv_width
        prev = hist if hist is not None else x.new_zeros(B, 0, d)
        xp = torch.cat([x.new_zeros(B, k - 1 - prev.shape[1], d), prev, x], dim=1)     # [B, n + k - 1, d]
        u = F.conv1d(xp.transpose(1, 2), self.conv.weight.to(x.dtype).unsqueeze(1), groups=d).transpose(1, 2)
        return u, xp[:, -(k - 1):] if k > 1 else None

    def forward(self, x, p, state=None, chunk=64):
        s = self.dh ** -0.5
        t0, sk0, sv0, hist = state if state is not None else (0, None, None, {})
        new_hist = {}
        if self.conv_width:
            x, new_hist["conv"] = self.causal_conv(x, hist.get("conv"))
        # The projections may run under autocast (bf16); the pack weights, the
        # running sums and the softmax are computed in the parameters' dtype.
        dt = self.q_proj.weight.dtype
        qp = (self.pq_proj(p).to(dt) * s).view(-1, self.h, self.dh).transpose(0, 1)   # [H, l, dh]
        pc = self.heads(self.pc_proj(x).to(dt))
        q = self.heads(self.q_proj(x).to(dt) * s)
        if self.tie_kv:
            k = v = self.heads(self.c_proj(x).to(dt))
        else:
            k, v = self.heads(self.k_proj(x).to(dt)), self.heads(self.v_proj(x).to(dt))
        with torch.autocast(x.device.type, enabled=False):
            a = softplus_ln2(pc @ qp.transpose(-1, -2).unsqueeze(0))               # [B, H, n, l]
            o, (sk, sv) = causal_luna(q, k, v, a, t0, sk0, sv0, chunk, self.decay)
            if self.local_window:
                ol, new_hist["local"] = local_attention(q, k, v, self.local_window, hist.get("local"))
                o = o + ol
        B, _, n, _ = o.shape
        y = self.out_proj(o.transpose(1, 2).reshape(B, n, -1))
        return y, (t0 + n, sk, sv, new_hist)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f = c["embed_dim"], c["ffn_embed_dim"]
        eps = c.get("layer_norm_eps", 1e-5)
        self.pre = c.get("normalize_before", False)
        self.act = F.gelu if c.get("activation", "relu") == "gelu" else F.relu
        self.self_attn = CausalAttention(c)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.fc1 = nn.Linear(d, f)
        self.fc2 = nn.Linear(f, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps)

    def ffn(self, x):
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, x, p, state=None, chunk=64):
        if self.pre:
            y, state = self.self_attn(self.self_attn_layer_norm(x), p, state, chunk)
            x = x + y
            x = x + self.ffn(self.final_layer_norm(x))
        else:
            y, state = self.self_attn(x, p, state, chunk)
            x = self.self_attn_layer_norm(x + y)
            x = self.final_layer_norm(x + self.ffn(x))
        return x, state


class LunaCausalLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        check_config(c)
        self.c = dict(c)
        d, V, l = c["embed_dim"], c["vocab_size"], c["projection_length"]
        self.pad = c.get("padding_idx", 1)
        self.embed_scale = c.get("embed_scale", math.sqrt(d))
        self.embed_tokens = nn.Embedding(V, d)
        self.projected_embeddings = nn.Parameter(torch.empty(l, d))
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_layers"]))
        self.layer_norm = nn.LayerNorm(d, eps=c.get("layer_norm_eps", 1e-5)) if c.get("normalize_before") else None
        if not c.get("tie_output_embedding", True):
            self.output_projection = nn.Linear(d, V, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        d = self.c["embed_dim"]
        nn.init.normal_(self.embed_tokens.weight, 0.0, d ** -0.5)
        nn.init.normal_(self.projected_embeddings, 0.0, d ** -0.5)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and m is not getattr(self, "output_projection", None):
                nn.init.xavier_uniform_(m.weight, gain=1.0 if name.endswith(("fc1", "fc2")) else 2 ** -0.5)
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Linear) and name.endswith(("out_proj", "fc2")):
                # Residual branches start small, scaled with depth.
                m.weight.data.mul_((2 * self.c["num_layers"]) ** -0.5)

    def p_matrix(self, dtype):
        l, d = self.projected_embeddings.shape
        pos = sinusoid_rows(torch.arange(l, device=self.projected_embeddings.device), d, dtype)
        return self.embed_scale * self.projected_embeddings + pos.to(self.projected_embeddings.device)

    def forward(self, tokens, states=None, chunk=64):
        """tokens [B, n] without padding; `states` continues a sequence (None: it starts here).

        Returns logits [B, n, vocab] and the states after the last token.
        """
        B, n = tokens.shape
        dtype = self.embed_tokens.weight.dtype
        t0 = states[0][0] if states is not None else 0
        # fairseq positions: token i (0-based) of a sequence without padding has position pad + 1 + i.
        rows = torch.arange(t0, t0 + n, device=tokens.device) + self.pad + 1
        x = self.embed_scale * self.embed_tokens(tokens)
        if not self.c.get("no_token_positional_embeddings", False):
            x = x + sinusoid_rows(rows, self.c["embed_dim"], dtype).to(tokens.device)
        p = self.p_matrix(dtype)
        new_states = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, p, None if states is None else states[i], chunk)
            new_states.append(s)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        w = self.output_projection.weight if hasattr(self, "output_projection") else self.embed_tokens.weight
        return x @ w.t(), new_states


def full_config(c):
    """The config with every key of docs/luna.md, "The model file", written out."""
    return {k: c[k] for k in CONFIG_KEYS if k in c}


def export(model: LunaCausalLM, path, dtype=torch.float32, extra_metadata=None):
    """Writes the model file: the tensor names of docs/luna.md, `luna.config`, `luna.tokenizer`."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {"luna.config": json.dumps(full_config(model.c)), "luna.tokenizer": json.dumps(TOKENIZER)}
    for k, v in (extra_metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    save_file(tensors, str(path), metadata=meta)


def load(path, dtype=torch.float64, device="cpu"):
    """Reads a model file written by `export` (or by the engine) into a LunaCausalLM of `dtype`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        c = json.loads(meta["luna.config"])
        c.setdefault("padding_idx", 1)
        c.setdefault("embed_scale", 1.0 if c.get("learned_pos") else math.sqrt(c["embed_dim"]))
        model = LunaCausalLM(c)
        sd = {k: f.get_tensor(k).to(torch.float32) for k in f.keys()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected}")
    return model.to(device=device, dtype=dtype).eval(), meta


def encode(data: bytes, bos=True):
    import numpy as np

    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int64) + OFFSET
    if bos:
        ids = np.concatenate([[BOS], ids])
    return torch.from_numpy(ids)


def decode(ids):
    return bytes(int(i) - OFFSET for i in ids if OFFSET <= int(i) < OFFSET + 256).decode("utf-8", "replace")
