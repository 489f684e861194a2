"""The parameter policy (paper §4.1) and its value network, in one readable file.

Architecture
  * Node encoder (48-d, 4 layers, 4 heads): a transformer over the node sequence, input = type
    embedding + depth embedding. Connectivity enters as a learned per-head attention bias for the
    relation of every node pair (self / direct input / direct consumer / ancestor / descendant /
    unrelated; `policy.tokenizer.REL_*`), as in Graphormer's spatial encoding. Every node still
    sees the whole graph in one layer, the bias costs one embedding lookup, and it needs no
    message-passing code.
  * Parameter decoder (96-d, 4 layers, 4 heads, causal): the input at slot i sums the embedding of
    the previous value token (BOS at slot 0), the slot's identity (parameter id, node type, vector
    component, slot position) and its node's encoder output (projected to 96-d). Each layer
    cross-attends to a memory of the image tokens (a grid, projected and position-embedded) and
    the node tokens. The head predicts one of 128 value tokens; invalid ones are masked out.
  * Value network: the same trunk, initialised from a policy (`ValueNetwork.from_policy`) with a
    fresh scalar head.

Teacher forcing (supervised pre-training)::

    from policy.batching import collate
    from policy.encoders import EfficientNetLite0Encoder
    from policy.model import MaterialPolicy, PolicyConfig
    from policy.tokenizer import GraphTokenizer, Vocabulary

    vocab = Vocabulary.from_registry()               # store vocab.to_dict() with the data / checkpoint
    encoder = EfficientNetLite0Encoder()             # frozen; images (B,3,H,W) in [0,1]
    policy = MaterialPolicy(PolicyConfig.for_encoder(encoder, vocab))
    tokenizers = [GraphTokenizer(g, vocab) for g in graphs]            # one per example (cache per structure)
    batch = collate([t.structure() for t in tokenizers],
                    [t.tokenize(p) for t, p in zip(tokenizers, param_sets)])
    with torch.no_grad():
        image_tokens = encoder(images).tokens        # (B, T, C); may be cached per image
    loss = policy.loss(batch.to(device), image_tokens.to(device))      # mean CE per real slot
    loss.backward()

`policy(batch, image_tokens)` returns masked logits (B, S, 128); `policy.log_probs(...)` the
log-probability of `batch.tokens` per slot (0 at padding) for PPO. Checkpoints:
`policy.checkpoint()` -> {"config": dict, "state_dict": tensors}; `MaterialPolicy.from_checkpoint`.

Incremental decoding (used by `policy.sampler`): `ctx = policy.trunk.context(batch, image_tokens)`,
`cache = policy.trunk.new_cache()`, then for each step `policy.step_logits(ctx, prev_token, step,
cache)`. The KV cache is transformers' `Cache` of `StaticLayer`s: preallocated, updated in place
with a device-side position, so a decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, StaticLayer

from policy.batching import PolicyBatch
from policy.tokenizer import NUM_RELATIONS, REL_PAD, VALUE_BINS, Vocabulary

BOS = VALUE_BINS  # value-token id fed before the first slot


@dataclass
class PolicyConfig:
    vocab: dict                   # Vocabulary.to_dict(): fixes node-type and parameter ids
    image_token_dim: int = 1280   # channels of the encoder's image tokens
    image_tokens: int = 49        # grid cells of the encoder (7x7 for EfficientNet-Lite0 at 224²)
    node_dim: int = 48
    node_layers: int = 4
    node_heads: int = 4
    max_depth: int = 64
    dim: int = 96
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    max_slots: int = 2048
    dropout: float = 0.0

    @classmethod
    def for_encoder(cls, encoder, vocab: Vocabulary | None = None, **overrides) -> "PolicyConfig":
        """A config whose image-token shape matches `encoder` (see `policy.encoders.ImageEncoder`)."""
        vocab = vocab or Vocabulary.from_registry()
        return cls(vocab=vocab.to_dict(), image_token_dim=encoder.token_dim, image_tokens=encoder.num_tokens,
                   **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyConfig":
        return cls(**data)


@dataclass
class DecoderContext:
    """Everything a decode step needs that does not change between steps."""

    slot_embed: torch.Tensor                       # (B, S, D) slot identity + node embedding
    memory_kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per layer (B,H,M,d)
    memory_mask: torch.Tensor | None = None        # (B, 1, 1, M) bool, True = attend
    token_masks: torch.Tensor | None = None        # (B, S, 128) bool
    group: int = 1  # decoded sequences per context row (rows of a group are adjacent)

    def repeat(self, n: int) -> "DecoderContext":
        """Decode n sequences per graph: cross-attention reads each graph's memory once for all n."""
        return DecoderContext(self.slot_embed, self.memory_kv, self.memory_mask, self.token_masks, self.group * n)


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(dim, ratio * dim)
        self.out = nn.Linear(ratio * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.out(F.gelu(self.fc(x))))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, H, T, D/H)."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention for a few queries (1 per sequence, or `group` per memory row) over many keys.

    In float32 it is two batched matrix products with a float32 softmax: PyTorch's fp32 SDPA
    kernel (memory-efficient, 64-query tiles) used ~10% of an H100's memory bandwidth here, and
    the sampler ran 2.3x faster at 1,024 sequences without it. In bf16/fp16 the fused (cuDNN
    flash) SDPA kernel was the faster of the two, so it is used.
    """
    if q.dtype in (torch.float16, torch.bfloat16):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.matmul(weights.to(v.dtype), v)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d) -> (B, T, H*d)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class NodeBlock(nn.Module):
    """Pre-norm transformer block whose attention is biased by the relation of each node pair."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relation_bias = nn.Embedding(NUM_RELATIONS, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(t, self.heads) for t in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        bias = self.relation_bias(relations).permute(0, 3, 1, 2).to(q.dtype)
        bias = bias.masked_fill((relations == REL_PAD)[:, None], float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.proj(_merge(y)), self.dropout, self.training)
        return x + self.mlp(self.ln2(x))


class NodeEncoder(nn.Module):
    def __init__(self, config: PolicyConfig, vocab: Vocabulary):
        super().__init__()
        self.max_depth = config.max_depth
        self.type_emb = nn.Embedding(vocab.num_node_types, config.node_dim)
        self.depth_emb = nn.Embedding(config.max_depth, config.node_dim)
        self.blocks = nn.ModuleList(NodeBlock(config.node_dim, config.node_heads, config.mlp_ratio, config.dropout)
                                    for _ in range(config.node_layers))
        self.ln_f = nn.LayerNorm(config.node_dim)

    def forward(self, batch: PolicyBatch) -> torch.Tensor:
        x = self.type_emb(batch.node_types) + self.depth_emb(batch.node_depth.clamp(max=self.max_depth - 1))
        for block in self.blocks:
            x = block(x, batch.relations)
        return self.ln_f(x)


class DecoderBlock(nn.Module):
    """Causal self-attention over slots, cross-attention to image and node tokens, MLP (pre-norm)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.cross_q = nn.Linear(dim, dim)
        self.cross_kv = nn.Linear(dim, 2 * dim)
        self.cross_proj = nn.Linear(dim, dim)
        self.ln3 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.cross_kv(memory).chunk(2, dim=-1)
        return _heads(k, self.heads), _heads(v, self.heads)

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor,
                cache: Cache | None = None, layer: int = 0, self_mask: torch.Tensor | None = None,
                kv_len: int | None = None, group: int = 1) -> torch.Tensor:
        """Teacher forcing when `cache` is None; otherwise one step whose keys join the cache.

        With a cache, `self_mask` (…, L) says which cached positions are filled, and `kv_len`
        (optional) limits attention to the first kv_len cached positions. `group` adjacent rows of
        x share one row of memory: their queries attend to it together (cross-attention is not
        causal, so this is exact and reads the memory once per group).
        """
        drop = self.dropout if self.training else 0.0
        q, k, v = (_heads(t, self.heads) for t in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            k, v = cache.update(k, v, layer)
            if kv_len is not None:
                k, v, self_mask = k[:, :, :kv_len], v[:, :, :kv_len], self_mask[..., :kv_len]
            y = decode_attention(q, k, v, self_mask)
        x = x + F.dropout(self.proj(_merge(y)), self.dropout, self.training)
        b, t, d = x.shape
        q = _heads(self.cross_q(self.ln2(x)).reshape(b // group, group * t, d), self.heads)
        if cache is None:
            y = F.scaled_dot_product_attention(q, *memory_kv, attn_mask=memory_mask, dropout_p=drop)
        else:
            y = decode_attention(q, *memory_kv, memory_mask)
        x = x + F.dropout(self.cross_proj(_merge(y).reshape(b, t, d)), self.dropout, self.training)
        return x + self.mlp(self.ln3(x))


class ParameterTransformer(nn.Module):
    """Node encoder + parameter decoder: hidden states per slot, shared by policy and value network."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        vocab = Vocabulary.from_dict(config.vocab)
        d = config.dim
        self.node_encoder = NodeEncoder(config, vocab)
        self.node_to_slot = nn.Linear(config.node_dim, d)
        self.node_to_memory = nn.Linear(config.node_dim, d)
        self.image_norm = nn.LayerNorm(config.image_token_dim)
        self.image_proj = nn.Linear(config.image_token_dim, d)
        self.image_pos = nn.Parameter(torch.zeros(config.image_tokens, d))
        self.value_emb = nn.Embedding(VALUE_BINS + 1, d)
        self.param_emb = nn.Embedding(vocab.num_params, d)
        self.type_emb = nn.Embedding(vocab.num_node_types, d)
        self.component_emb = nn.Embedding(vocab.max_components, d)
        self.slot_pos = nn.Embedding(config.max_slots, d)
        self.blocks = nn.ModuleList(DecoderBlock(d, config.heads, config.mlp_ratio, config.dropout)
                                    for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(d)
        self.apply(_init_weights)

    def context(self, batch: PolicyBatch, image_tokens: torch.Tensor) -> DecoderContext:
        """Encode nodes and image once; precompute per-slot inputs and cross-attention keys/values."""
        cfg = self.config
        if image_tokens.dim() != 3 or tuple(image_tokens.shape[1:]) != (cfg.image_tokens, cfg.image_token_dim):
            raise ValueError(f"image tokens of shape {tuple(image_tokens.shape)}; this policy expects "
                             f"(B, {cfg.image_tokens}, {cfg.image_token_dim})")
        if image_tokens.shape[0] != batch.size:
            raise ValueError(f"{image_tokens.shape[0]} images for a batch of {batch.size} graphs")
        if batch.num_slots > cfg.max_slots:
            raise ValueError(f"{batch.num_slots} slots exceed this policy's max_slots={cfg.max_slots}")
        nodes = self.node_encoder(batch)                                           # (B, N, node_dim)
        slot_nodes = torch.gather(nodes, 1, batch.slot_node[..., None].expand(-1, -1, nodes.shape[-1]))
        slot_types = torch.gather(batch.node_types, 1, batch.slot_node)
        positions = torch.arange(batch.num_slots, device=nodes.device)
        slot_embed = (self.param_emb(batch.slot_param) + self.type_emb(slot_types)
                      + self.component_emb(batch.slot_component) + self.slot_pos(positions)[None]
                      + self.node_to_slot(slot_nodes))
        image = self.image_proj(self.image_norm(image_tokens.to(nodes.dtype))) + self.image_pos
        memory = torch.cat([image, self.node_to_memory(nodes)], dim=1)
        keep = torch.cat([torch.ones(batch.size, image.shape[1], dtype=torch.bool, device=nodes.device),
                          batch.node_mask], dim=1)
        return DecoderContext(slot_embed=slot_embed, memory_kv=[blk.memory_kv(memory) for blk in self.blocks],
                              memory_mask=keep[:, None, None, :], token_masks=batch.token_masks)

    def forward(self, batch: PolicyBatch, image_tokens: torch.Tensor, tokens: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Teacher forcing: hidden states (B, S, D); slot i sees tokens of slots < i."""
        tokens = batch.tokens if tokens is None else tokens
        if tokens is None:
            raise ValueError("teacher forcing needs target tokens (collate them into the batch)")
        ctx = self.context(batch, image_tokens)
        prev = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
        x = self.value_emb(prev) + ctx.slot_embed
        for blk, kv in zip(self.blocks, ctx.memory_kv):
            x = blk(x, kv, ctx.memory_mask)
        return self.ln_f(x)

    def new_cache(self, max_len: int) -> Cache:
        """An empty static KV cache for `max_len` slots (allocated on the first step)."""
        return Cache(layers=[StaticLayer(max_len) for _ in self.blocks])

    def decode_step(self, ctx: DecoderContext, prev_token: torch.Tensor, step: torch.Tensor | int, cache: Cache,
                    kv_len: int | None = None) -> torch.Tensor:
        """Hidden state (B, D) of slot `step` given the previous token (B,); appends to `cache`.

        B = context rows x `ctx.group` (see `DecoderContext.repeat`).

        `step` may be a 0-d device tensor so that the step can be replayed as a CUDA graph.
        """
        step = torch.as_tensor(step, device=prev_token.device).reshape(1)
        slot = ctx.slot_embed.index_select(1, step)
        if ctx.group > 1:
            slot = slot.repeat_interleave(ctx.group, 0)
        x = self.value_emb(prev_token)[:, None] + slot
        max_len = cache.layers[0].max_cache_len
        filled = (torch.arange(max_len, device=prev_token.device) <= step)[None, None, None, :]
        for i, (blk, kv) in enumerate(zip(self.blocks, ctx.memory_kv)):
            x = blk(x, kv, ctx.memory_mask, cache=cache, layer=i, self_mask=filled, kv_len=kv_len, group=ctx.group)
        return self.ln_f(x)[:, 0]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    elif isinstance(module, ParameterTransformer):
        nn.init.normal_(module.image_pos, std=0.02)


def mask_logits(logits: torch.Tensor, token_masks: torch.Tensor) -> torch.Tensor:
    """Invalid tokens get the dtype's lowest value (probability 0, no NaN in entropies)."""
    return logits.masked_fill(~token_masks, torch.finfo(logits.dtype).min)


class _Checkpointable(nn.Module):
    config: PolicyConfig

    def checkpoint(self) -> dict[str, Any]:
        """Plain dict of the config and tensors (safe for `torch.save(..., weights_only=True)` loading)."""
        return {"config": self.config.to_dict(), "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]):
        model = cls(PolicyConfig.from_dict(checkpoint["config"]))
        model.load_state_dict(checkpoint["state_dict"])
        return model


class MaterialPolicy(_Checkpointable):
    """The parameter generator p(s_i | s_<i, graph, image) over 128 value tokens per slot."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.trunk = ParameterTransformer(config)
        self.head = nn.Linear(config.dim, VALUE_BINS)
        _init_weights(self.head)

    def forward(self, batch: PolicyBatch, image_tokens: torch.Tensor, tokens: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Masked logits (B, S, 128) under teacher forcing on `tokens` (default `batch.tokens`)."""
        return mask_logits(self.head(self.trunk(batch, image_tokens, tokens)), batch.token_masks)

    def log_probs(self, batch: PolicyBatch, image_tokens: torch.Tensor, tokens: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """log p(token) per slot (B, S), 0 at padded slots."""
        tokens = batch.tokens if tokens is None else tokens
        logp = torch.log_softmax(self(batch, image_tokens, tokens).float(), dim=-1)
        return logp.gather(-1, tokens[..., None])[..., 0] * batch.slot_mask

    def loss(self, batch: PolicyBatch, image_tokens: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy per real slot (teacher forcing), the pre-training objective."""
        logits = self(batch, image_tokens)
        return F.cross_entropy(logits[batch.slot_mask].float(), batch.tokens[batch.slot_mask])

    def step_logits(self, ctx: DecoderContext, prev_token: torch.Tensor, step: torch.Tensor | int, cache: Cache,
                    kv_len: int | None = None) -> torch.Tensor:
        """Masked logits (B, 128) of slot `step`; see `ParameterTransformer.decode_step`."""
        hidden = self.trunk.decode_step(ctx, prev_token, step, cache, kv_len)
        step = torch.as_tensor(step, device=prev_token.device).reshape(1)
        masks = ctx.token_masks.index_select(1, step)[:, 0]
        if ctx.group > 1:
            masks = masks.repeat_interleave(ctx.group, 0)
        return mask_logits(self.head(hidden), masks)


class ValueNetwork(_Checkpointable):
    """State values per slot (B, S): the policy's trunk with a fresh scalar head (paper §4.4).

    The head starts at zero, so V = 0 everywhere before the first update. With a random head
    (normal, std 0.02) the first values varied ~4x more than the returns they should predict
    (explained variance -14 on the tiny preset's first iteration, centred rewards of std ~0.05):
    the first PPO update then followed the value head's noise, not the reward, and the policy's
    expected reward on held-out targets fell from 0.624 to 0.526 (docs/rl.md). At zero the first
    advantages are the (baselined) rewards themselves.
    """

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.trunk = ParameterTransformer(config)
        self.head = nn.Linear(config.dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_policy(cls, policy: MaterialPolicy) -> "ValueNetwork":
        value = cls(policy.config)
        value.trunk.load_state_dict(policy.trunk.state_dict())
        return value.to(next(policy.parameters()).device)

    def forward(self, batch: PolicyBatch, image_tokens: torch.Tensor, tokens: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.head(self.trunk(batch, image_tokens, tokens))[..., 0] * batch.slot_mask
