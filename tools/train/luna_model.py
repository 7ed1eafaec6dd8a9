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


def causal_luna(q, k, v, a, t0, sk0=None, sv0=None, chunk=64):
    """Causal Luna attention, parallel form.

    q, k, v: [B, H, n, dh] (q already scaled by dh^-0.5); a: [B, H, n, l] pack weights.
    t0: tokens already seen (the state's count); sk0 [B, H, dh, l], sv0 [B, H, l, dh] the state or None.
    Returns o [B, H, n, dh] and the state after the last token.
    """
    B, H, n, dh = q.shape
    l = a.shape[-1]
    C = min(chunk, n)
    N = -(-n // C)
    pad = N * C - n
    if pad:
        q, k, v, a = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, a))
    q, k, v, a = (x.reshape(B, H, N, C, x.shape[-1]) for x in (q, k, v, a))
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


class CausalAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["embed_dim"]
        self.h = c["num_heads"]
        self.dh = d // self.h
        self.tie_kv = c.get("tie_kv", False)
        self.q_proj = nn.Linear(d, d)
        self.pq_proj = nn.Linear(d, d)
        self.pc_proj = nn.Linear(d, d)
        if self.tie_kv:
            self.c_proj = nn.Linear(d, d)
        else:
            self.k_proj = nn.Linear(d, d)
            self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def heads(self, x):  # [B, n, d] -> [B, H, n, dh]
        B, n, _ = x.shape
        return x.view(B, n, self.h, self.dh).transpose(1, 2)

    def forward(self, x, p, state=None, chunk=64):
        s = self.dh ** -0.5
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
        t0, sk0, sv0 = state if state is not None else (0, None, None)
        with torch.autocast(x.device.type, enabled=False):
            a = softplus_ln2(pc @ qp.transpose(-1, -2).unsqueeze(0))               # [B, H, n, l]
            o, (sk, sv) = causal_luna(q, k, v, a, t0, sk0, sv0, chunk)
        B, _, n, _ = o.shape
        y = self.out_proj(o.transpose(1, 2).reshape(B, n, -1))
        return y, (t0 + n, sk, sv)


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
        x = self.embed_scale * self.embed_tokens(tokens) + sinusoid_rows(rows, self.c["embed_dim"], dtype).to(tokens.device)
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
