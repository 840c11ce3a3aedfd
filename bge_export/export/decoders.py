"""Our own torch implementation of the decoder architectures behind the LLM-based BGE families.

One compact pre-norm decoder stack covers every registered architecture (bge_export/families/decoder_archs.py:
Llama/Mistral, Gemma, Gemma2, MiniCPM, and what family modules register, such as Qwen2 / Qwen3); it loads the
checkpoints' own weight files (safetensors or weights-only pickles), so the custom-code models need no
``trust_remote_code``. It is written for export: positions ``arange(L)``, a self-built additive
causal + padding (+ sliding window) mask with a finite fill, attention as plain MatMul/Softmax (no fused kernels
that would drop Gemma2's soft-cap), norms, RoPE and softmax in fp32 whatever the weight dtype, and the score
heads reading only the rows they need (never full-vocabulary logits).

The wrappers at the bottom are the four graphs: last-token embedding, "Yes"-logit reranker, layer-wise scores
and token-compressed (lightweight Gemma2) scores. reference-semantics.md §3-§8 is the spec; the parity suite
holds these modules to FlagEmbedding's own classes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bge_export.errors import CheckpointError
from bge_export.export.wrappers import user_weights
from bge_export.families.decoder_archs import DecoderSpec


# --- weights ------------------------------------------------------------------------------------------------

def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder: (sharded) safetensors, else (sharded) pytorch_model.bin, weights only."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        files = sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{path} has no weights (*.safetensors or pytorch_model*.bin); copy the weight files "
                              "of the original checkpoint next to config.json")
    state: dict[str, torch.Tensor] = {}
    with user_weights(path):  # a truncated or corrupt weight file is a one-line CheckpointError
        for f in files:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                state.update(load_file(str(f)))
            else:
                state.update(torch.load(str(f), map_location="cpu", weights_only=True))
    return state


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone keys without the ``model.`` prefix of the *ForCausalLM layouts."""
    return {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}


# --- modules ------------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, offset: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size) if offset else torch.ones(size))
        self.eps, self.offset = eps, offset

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight.float() + 1.0 if self.offset else self.weight.float()
        return (h * w).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, s: DecoderSpec):
        super().__init__()
        self.s = s
        self.q_proj = nn.Linear(s.hidden, s.heads * s.head_dim, bias=s.qkv_bias)
        self.k_proj = nn.Linear(s.hidden, s.kv_heads * s.head_dim, bias=s.qkv_bias)
        self.v_proj = nn.Linear(s.hidden, s.kv_heads * s.head_dim, bias=s.qkv_bias)
        self.o_proj = nn.Linear(s.heads * s.head_dim, s.hidden, bias=s.o_bias)
        if s.qk_norm:  # per-head RMSNorm over head_dim, before RoPE
            self.q_norm = RMSNorm(s.head_dim, s.eps, s.norm_offset)
            self.k_norm = RMSNorm(s.head_dim, s.eps, s.norm_offset)

    def forward(self, x, cos, sin, bias):
        s = self.s
        b, length, _ = x.shape
        q = self.q_proj(x).view(b, length, s.heads, s.head_dim)
        k = self.k_proj(x).view(b, length, s.kv_heads, s.head_dim)
        if s.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(b, length, s.kv_heads, s.head_dim).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if s.kv_heads != s.heads:  # grouped-query attention: each KV head serves heads // kv_heads query heads
            g = s.heads // s.kv_heads
            k = k[:, :, None].expand(b, s.kv_heads, g, length, s.head_dim).reshape(b, s.heads, length, s.head_dim)
            v = v[:, :, None].expand(b, s.kv_heads, g, length, s.head_dim).reshape(b, s.heads, length, s.head_dim)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * s.scale
        if s.attn_softcap is not None:
            scores = torch.tanh(scores / s.attn_softcap) * s.attn_softcap
        probs = torch.softmax(scores + bias, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, length, s.heads * s.head_dim)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, s: DecoderSpec):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden, s.intermediate, bias=False)
        self.up_proj = nn.Linear(s.hidden, s.intermediate, bias=False)
        self.down_proj = nn.Linear(s.intermediate, s.hidden, bias=False)
        self.gelu = s.activation == "gelu_tanh"

    def forward(self, x):
        g = self.gate_proj(x)
        g = nn.functional.gelu(g, approximate="tanh") if self.gelu else nn.functional.silu(g)
        return self.down_proj(g * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, s: DecoderSpec, index: int):
        super().__init__()
        self.s = s
        self.self_attn = Attention(s)
        self.mlp = MLP(s)
        self.input_layernorm = RMSNorm(s.hidden, s.eps, s.norm_offset)
        self.post_attention_layernorm = RMSNorm(s.hidden, s.eps, s.norm_offset)
        if s.sandwich_norms:
            self.pre_feedforward_layernorm = RMSNorm(s.hidden, s.eps, s.norm_offset)
            self.post_feedforward_layernorm = RMSNorm(s.hidden, s.eps, s.norm_offset)
        self.windowed = s.sliding_window is not None and (
            s.sliding_layers == "all" or (s.sliding_layers == "even" and index % 2 == 0))

    def forward(self, h, cos, sin, full_bias, window_bias):
        a = self.self_attn(self.input_layernorm(h), cos, sin, window_bias if self.windowed else full_bias)
        if self.s.sandwich_norms:  # Gemma2
            h = h + self.post_attention_layernorm(a)
            return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
        h = h + a * self.s.residual_scale if self.s.residual_scale != 1.0 else h + a
        m = self.mlp(self.post_attention_layernorm(h))
        return h + m * self.s.residual_scale if self.s.residual_scale != 1.0 else h + m


def rope(x, cos, sin):
    """Rotary embedding in fp32 (HF's rotate_half layout), cast back to the activation dtype."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class DecoderStack(nn.Module):
    """Embedding + the first ``n_layers`` decoder layers + the shared final norm."""

    def __init__(self, s: DecoderSpec, n_layers: int):
        super().__init__()
        self.s = s
        self.embed_tokens = nn.Embedding(s.vocab, s.hidden)
        self.layers = nn.ModuleList(DecoderLayer(s, i) for i in range(n_layers))
        self.norm = RMSNorm(s.hidden, s.eps, s.norm_offset)
        inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2, dtype=torch.float32) / s.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def load(self, state: dict[str, torch.Tensor], path: Path) -> None:
        mine = self.state_dict()
        want = {k: state[k] for k in mine if k in state}
        missing = sorted(set(mine) - set(want))
        if missing:
            raise CheckpointError(f"{path}: the weights lack {len(missing)} tensors of a {self.s.arch} decoder "
                                  f"(e.g. {missing[:3]}); the checkpoint is incomplete or of another architecture")
        bad = [k for k in want if want[k].shape != mine[k].shape]
        if bad:
            raise CheckpointError(f"{path}: {bad[0]} has shape {tuple(want[bad[0]].shape)}, config.json implies "
                                  f"{tuple(mine[bad[0]].shape)}; config and weights do not belong together")
        self.load_state_dict(want, strict=True)

    def embed(self, input_ids):
        h = self.embed_tokens(input_ids)
        # Gemma multiplies by sqrt(hidden) rounded to the weight dtype (HF does the same)
        return h * torch.tensor(self.s.embed_scale, dtype=h.dtype)

    def positions(self, length: int, dtype):
        pos = torch.arange(length, dtype=torch.float32, device=self.inv_freq.device)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[None, None], emb.sin()[None, None]

    def biases(self, attention_mask):
        """Additive (B, 1, L, L) fp32 masks: causal + padding, and the same within the sliding window."""
        length = attention_mask.shape[1]
        i = torch.arange(length, device=attention_mask.device)
        causal = i[None, :] <= i[:, None]
        allowed = causal[None, None] & (attention_mask[:, None, None, :] > 0)
        fill = torch.finfo(torch.float32).min
        zero = torch.zeros((), dtype=torch.float32)
        full = torch.where(allowed, zero, fill)
        if self.s.sliding_window is None:
            return full, full
        near = (i[:, None] - i[None, :]) < self.s.sliding_window
        return full, torch.where(allowed & near[None, None], zero, fill)

    def run_layers(self, h, attention_mask, start: int, stop: int, cache=None):
        cos, sin = cache if cache is not None else self.positions(h.shape[1], h.dtype)
        full, window = self.biases(attention_mask)
        for layer in self.layers[start:stop]:
            h = layer(h, cos, sin, full, window)
        return h


def last_index(attention_mask):
    """Index of the last real token per row, for left or right padding: argmax_j (j * mask_j)."""
    length = attention_mask.shape[1]
    j = torch.arange(length, device=attention_mask.device)[None, :]
    return torch.argmax(j * attention_mask, dim=1)


def gather_rows(h, index):
    return h[torch.arange(h.shape[0], device=h.device), index]


def build_stack(path: Path, spec: DecoderSpec, n_layers: int, dtype: torch.dtype, state=None) -> DecoderStack:
    state = _strip(state if state is not None else load_state_dict(path))
    stack = DecoderStack(spec, n_layers)
    stack.load(state, path)
    return stack.to(dtype).eval()


# --- the four graphs ----------------------------------------------------------------------------------------

class LastTokenEmbedder(nn.Module):
    """llm-embedder: the final-normed hidden state of the last real token ``(B, H)``, un-normalised, fp32."""

    def __init__(self, stack: DecoderStack):
        super().__init__()
        self.stack = stack

    def forward(self, input_ids, attention_mask):
        h = self.stack.run_layers(self.stack.embed(input_ids), attention_mask, 0, len(self.stack.layers))
        return self.stack.norm(gather_rows(h, last_index(attention_mask))).float()


class YesScorer(nn.Module):
    """llm-reranker: <final_norm(h_last), W_lm["Yes"]> (one row of the LM head, never the full vocabulary)."""

    def __init__(self, stack: DecoderStack, yes_row: torch.Tensor, final_softcap: float | None):
        super().__init__()
        self.stack = stack
        self.yes = nn.Parameter(yes_row.to(stack.embed_tokens.weight.dtype).clone(), requires_grad=False)
        self.softcap = final_softcap

    def forward(self, input_ids, attention_mask):
        h = self.stack.run_layers(self.stack.embed(input_ids), attention_mask, 0, len(self.stack.layers))
        last = self.stack.norm(gather_rows(h, last_index(attention_mask))).float()
        score = (last * self.yes.float()).sum(-1)  # a Mul + ReduceSum: int8 leaves this single row in fp32
        if self.softcap:
            score = torch.tanh(score / self.softcap) * self.softcap
        return score


class LayerwiseScorer(nn.Module):
    """layerwise-reranker: for each (sorted) cutoff c, <head_c, final_norm(h after c layers)[last]> ``(B, n_cut)``.
    The stack holds only max(cutoffs) layers."""

    def __init__(self, stack: DecoderStack, cutoffs: list[int], heads: torch.Tensor):
        super().__init__()
        self.stack, self.cutoffs = stack, list(cutoffs)
        self.heads = nn.Parameter(heads.to(stack.embed_tokens.weight.dtype).clone(), requires_grad=False)  # (n, H)

    def forward(self, input_ids, attention_mask):
        s = self.stack
        h = s.embed(input_ids)
        cache = s.positions(h.shape[1], h.dtype)
        idx = last_index(attention_mask)
        scores, done = [], 0
        for c in self.cutoffs:
            h = s.run_layers(h, attention_mask, done, c, cache)
            done = c
            scores.append(s.norm(gather_rows(h, idx)).float())
        states = torch.stack(scores, dim=1)  # (B, n, H)
        return (states * self.heads.float()[None]).sum(-1)


class CompressedScorer(nn.Module):
    """compressed-reranker (bge-reranker-v2.5-gemma2-lightweight) at fixed (cutoffs, ratio, compress layers).

    Token compression stays in the graph at the input length L: an averaging matrix (B, L, L) built from the
    per-row query / prompt lengths maps ``[query][passage][prompt][pad]`` to ``[query][passage means][prompt][0...]``
    and the mask to the first q + ceil(p / ratio) + r positions, so no shape depends on the data. Head i scores
    the i-th recorded state (FlagEmbedding's indexing), soft-capped by ``final_logit_softcapping``.
    """

    def __init__(self, stack: DecoderStack, cutoffs: list[int], heads: torch.Tensor, ratio: int,
                 compress_layers: list[int], final_softcap: float | None):
        super().__init__()
        self.stack, self.cutoffs, self.ratio = stack, list(cutoffs), int(ratio)
        self.compress_at = sorted(i for i in compress_layers if 0 < i < max(cutoffs)) if ratio > 1 else []
        self.heads = nn.Parameter(heads.to(stack.embed_tokens.weight.dtype).clone(), requires_grad=False)
        self.softcap = final_softcap

    def compress(self, h, mask, q_len, r_len):
        length = mask.shape[1]
        r = self.ratio
        p_len = mask.sum(1) - q_len - r_len
        kept = (p_len + r - 1) // r
        t = torch.arange(length, device=h.device)[None, :, None]  # new position
        src = torch.arange(length, device=h.device)[None, None, :]  # old position
        q, p, rr, k = (x[:, None, None] for x in (q_len, p_len, r_len, kept))
        query = (t < q) & (src == t)
        chunk = t - q
        start = q + chunk * r
        in_passage = (t >= q) & (t < q + k)
        passage = in_passage & (src >= start) & (src < start + r) & (src < q + p)
        count = torch.clamp(torch.minimum(torch.full_like(chunk, r), p - chunk * r), min=1)
        prompt = (t >= q + k) & (t < q + k + rr) & (src == t - k + p)
        weights = query.float() + prompt.float() + passage.float() / count.float()
        new_h = torch.matmul(weights.to(h.dtype), h)
        new_mask = (torch.arange(length, device=h.device)[None, :] < (q_len + kept + r_len)[:, None]).to(mask.dtype)
        return new_h, new_mask

    def forward(self, input_ids, attention_mask, query_lengths, prompt_lengths):
        s = self.stack
        h = s.embed(input_ids)
        cache = s.positions(h.shape[1], h.dtype)
        mask = attention_mask
        states, done = [], 0
        stops = sorted(set(self.cutoffs) | set(self.compress_at))
        for stop in stops:
            h = s.run_layers(h, mask, done, stop, cache)
            done = stop
            if stop in self.cutoffs:
                states.append(s.norm(gather_rows(h, last_index(mask))).float())
            if stop in self.compress_at:
                h, mask = self.compress(h, mask, query_lengths, prompt_lengths)
        logits = (torch.stack(states, dim=1) * self.heads.float()[None]).sum(-1)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
