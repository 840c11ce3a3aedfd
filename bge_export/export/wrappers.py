"""nn.Module wrappers that expose exactly the tensors a family's graph outputs. Imports torch."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from torch import nn

from bge_export.errors import CheckpointError


@contextlib.contextmanager
def user_weights(path: Path, what: str = "the weights"):
    """Any failure to read a user's weight files (safetensors, pickles, shapes) is a CheckpointError, not a bug."""
    try:
        yield
    except Exception as exc:
        raise CheckpointError(f"{path}: {what} do not load ({type(exc).__name__}: {str(exc)[:300]}); "
                              "restore them from the original checkpoint") from None


def load_pretrained(auto_class, path: Path) -> nn.Module:
    with user_weights(path):
        return auto_class.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa").eval()


class EncoderPooler(nn.Module):
    """BERT / XLM-R encoder -> pooled vector (un-normalised), as FlagModel pools it.

    With ``cls_only_last_layer`` the last transformer layer is evaluated for the CLS row only: keys and
    values still come from every token, so the result equals the full model's ``last_hidden_state[:, 0]``.
    """

    def __init__(self, model: nn.Module, *, pooling: str, cls_only_last_layer: bool, **_ignored):
        super().__init__()
        self.pooling = pooling
        self.cls_only = cls_only_last_layer
        self.last = None
        if self.cls_only:
            layers = model.encoder.layer
            self.last = layers[-1]
            model.encoder.layer = nn.ModuleList(list(layers)[:-1])
        self.model = model
        self.uses_token_type_ids = model.config.model_type == "bert"

    @classmethod
    def from_checkpoint(cls, path: Path, **variant) -> "EncoderPooler":
        from transformers import AutoModel

        return cls(load_pretrained(AutoModel, path), **variant).eval()

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.uses_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        h = self.model(**kwargs, return_dict=True).last_hidden_state
        if self.cls_only:
            return self._last_layer_cls(h, attention_mask)
        if self.pooling == "cls":
            return h[:, 0]
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(dim=1) / attention_mask.sum(dim=1, keepdim=True).to(h.dtype)

    def _last_layer_cls(self, h, attention_mask):
        layer = self.last
        sa = layer.attention.self
        b, length, hidden = h.shape
        nh = sa.num_attention_heads
        d = hidden // nh
        cls_row = h[:, :1]
        q = sa.query(cls_row).view(b, 1, nh, d).transpose(1, 2)
        k = sa.key(h).view(b, length, nh, d).transpose(1, 2)
        v = sa.value(h).view(b, length, nh, d).transpose(1, 2)
        bias = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d) + bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, 1, hidden)
        out = layer.attention.output
        a = out.LayerNorm(out.dense(ctx) + cls_row)
        ffn = layer.output
        y = ffn.LayerNorm(ffn.dense(layer.intermediate(a)) + a)
        return y[:, 0]


class CrossEncoderScorer(nn.Module):
    """BERT / XLM-R sequence classifier with one label -> ``score (batch,)``, the relevance logit.

    The classification heads read only the CLS row, so the backbone runs through EncoderPooler (with the
    CLS-only last layer when allowed) and the head is applied to that row.
    """

    def __init__(self, model: nn.Module, *, cls_only_last_layer: bool):
        super().__init__()
        self.kind = model.config.model_type
        base = model.roberta if self.kind == "xlm-roberta" else model.bert
        self.bert_pooler = base.pooler if self.kind == "bert" else None
        self.encoder = EncoderPooler(base, pooling="cls", cls_only_last_layer=cls_only_last_layer)
        self.classifier = model.classifier

    @classmethod
    def from_checkpoint(cls, path: Path, *, cls_only_last_layer: bool) -> "CrossEncoderScorer":
        from transformers import AutoModelForSequenceClassification

        model = load_pretrained(AutoModelForSequenceClassification, path)
        return cls(model, cls_only_last_layer=cls_only_last_layer).eval()

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        cls_row = self.encoder(input_ids, attention_mask, token_type_ids)[:, None, :]
        if self.bert_pooler is not None:  # BERT: pooler (dense + tanh on the CLS row), then the classifier
            return self.classifier(self.bert_pooler(cls_row))[:, 0]
        return self.classifier(cls_row)[:, 0]  # XLM-R: the head reads features[:, 0] itself


class M3Heads(nn.Module):
    """bge-m3: XLM-R backbone + the two extra linear heads -> three raw outputs, un-normalised.

    dense_vecs (B, H): the CLS row. token_weights (B, L): relu(sparse_linear(h)), per token, not aggregated.
    colbert_vecs (B, L, D): colbert_linear(h) * mask for every position; the host drops row 0 (CLS) as
    FlagEmbedding does (it applies the head to h[:, 1:]), so one graph serves every slicing.
    """

    def __init__(self, model: nn.Module, colbert: nn.Linear, sparse: nn.Linear):
        super().__init__()
        self.model, self.colbert, self.sparse = model, colbert, sparse

    @classmethod
    def from_checkpoint(cls, path: Path) -> "M3Heads":
        from transformers import AutoModel

        path = Path(path)
        model = load_pretrained(AutoModel, path)
        with user_weights(path, "the M3 head files"):
            heads = {name: load_head(path, name) for name in ("colbert", "sparse")}
            hidden = model.config.hidden_size
            colbert = nn.Linear(hidden, heads["colbert"]["weight"].shape[0])
            colbert.load_state_dict(heads["colbert"])
            sparse = nn.Linear(hidden, 1)
            sparse.load_state_dict(heads["sparse"])
        return cls(model, colbert.eval(), sparse.eval()).eval()

    def forward(self, input_ids, attention_mask):
        h = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        token_weights = torch.relu(self.sparse(h)).squeeze(-1)
        colbert = self.colbert(h) * attention_mask[:, :, None].to(h.dtype)
        return h[:, 0], token_weights, colbert


def load_head(path: Path, name: str) -> dict:
    """A bge-m3 head file (``colbert_linear.pt`` / ``sparse_linear.pt``): a plain state_dict, never a pickle."""
    return torch.load(Path(path) / f"{name}_linear.pt", map_location="cpu", weights_only=True)
