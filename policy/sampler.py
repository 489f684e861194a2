"""Batched autoregressive sampling of parameter tokens with a KV cache (CPU and CUDA).

Each step draws one token per sequence by inverse-CDF sampling with one pre-drawn uniform per
(sequence, slot): the uniforms come from a seeded CPU generator, so a seed fixes the result on any
device, and no random-number generator runs inside the decode step (which lets a CUDA step be
captured as a graph). Temperature, top-k and top-p reshape the distribution before the draw; the
slot masks always apply; greedy takes the argmax.

On CUDA the decode step is captured as CUDA graphs, one per `kv_bucket` of positions (attention
reads the cache only up to the end of the current bucket), and replayed step after step: a 96-d
decoder is launch-bound otherwise. The graphs read the policy's parameters in place, so weights
updated in place (optimizer steps, `load_state_dict`) are picked up by later calls.

`sample_by_rerun` is the reference without a cache: it re-runs the whole model on the prefix at
every step, as ProcMatRL samples. It shares the draw, so both give the same tokens for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from policy.batching import PolicyBatch
from policy.model import BOS, DecoderContext, MaterialPolicy
from policy.tokenizer import VALUE_BINS


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_k: int = 0          # 0: off
    top_p: float = 1.0      # 1.0: off
    greedy: bool = False
    cuda_graphs: bool = True
    kv_bucket: int = 128    # CUDA: attention span granularity (one graph per bucket)
    dtype: str = "float32"  # "bfloat16": autocast the decoder on CUDA (log-probs still float32)

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {self.temperature}")
        if not 0 <= self.top_k <= VALUE_BINS:
            raise ValueError(f"top_k must be in 0..{VALUE_BINS}, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.kv_bucket < 1:
            raise ValueError(f"kv_bucket must be >= 1, got {self.kv_bucket}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")


@dataclass
class SampleResult:
    """Tokens and log-probabilities per slot, 0 at padded slots.

    `log_probs` are under the policy itself (temperature 1, masks only): what PPO's ratio needs.
    `sample_log_probs` are under the distribution actually sampled from (after temperature,
    top-k, top-p; 0 in greedy mode).
    """

    tokens: torch.Tensor            # (B, S) long
    log_probs: torch.Tensor         # (B, S) float32
    sample_log_probs: torch.Tensor  # (B, S) float32


def draw_uniforms(batch_size: int, num_slots: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (B, S) uniforms in (0, 1] that fix a sampling run."""
    gen = torch.Generator().manual_seed(int(seed))
    return (1.0 - torch.rand(batch_size, num_slots, generator=gen)).to(device)


def choose(logits: torch.Tensor, uniforms: torch.Tensor, config: SamplingConfig
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step: masked logits (B, 128) and uniforms (B,) -> tokens, policy log-probs, sample log-probs."""
    logits = logits.float()
    policy_logp = torch.log_softmax(logits, dim=-1)
    if config.greedy:
        token = logits.argmax(-1)
        return token, policy_logp.gather(1, token[:, None])[:, 0], torch.zeros_like(policy_logp[:, 0])
    warped = logits / config.temperature
    if config.top_k:
        kth = warped.topk(config.top_k, dim=-1).values[:, -1:]
        warped = warped.masked_fill(warped < kth, float("-inf"))
    if config.top_p < 1.0:
        ordered, order = warped.sort(dim=-1, descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass strictly before each token
        drop = torch.zeros_like(warped, dtype=torch.bool).scatter(1, order, before >= config.top_p)
        warped = warped.masked_fill(drop, float("-inf"))
    sample_logp = torch.log_softmax(warped, dim=-1)
    cdf = sample_logp.exp().cumsum(-1)
    target = uniforms[:, None].float() * cdf[:, -1:]
    token = (cdf < target).sum(-1).clamp(max=VALUE_BINS - 1)
    return (token, policy_logp.gather(1, token[:, None])[:, 0], sample_logp.gather(1, token[:, None])[:, 0])


class Sampler:
    """Samples parameter-token sequences from a `MaterialPolicy` for a padded `PolicyBatch`."""

    def __init__(self, policy: MaterialPolicy, config: SamplingConfig = SamplingConfig()):
        self.policy = policy
        self.config = config
        self._graphed: _GraphedDecoder | None = None

    @torch.no_grad()
    def sample(self, batch: PolicyBatch, image_tokens: torch.Tensor, seed: int = 0,
               samples_per_graph: int = 1) -> SampleResult:
        """`samples_per_graph` sequences for each graph of `batch`, adjacent in the result (G*n rows).

        `image_tokens` (G, T, C): one row per graph. The n samples of a graph share its node
        encoding and cross-attention memory, which is computed and read once for all of them.
        """
        if samples_per_graph < 1:
            raise ValueError(f"samples_per_graph must be >= 1, got {samples_per_graph}")
        device = next(self.policy.parameters()).device
        batch = batch.to(device)
        b, s = batch.size * samples_per_graph, batch.num_slots
        uniforms = draw_uniforms(b, s, seed, device)
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self._autocast(device):
                ctx = self.policy.trunk.context(batch, image_tokens.to(device)).repeat(samples_per_graph)
            if device.type == "cuda" and self.config.cuda_graphs and s > 0:
                tokens, logp, slogp = self._graphed_decoder(ctx, b, s).run(ctx, uniforms)
            else:
                tokens, logp, slogp = self._eager(ctx, uniforms, device)
        finally:
            self.policy.train(was_training)
        keep = batch.slot_mask.repeat_interleave(samples_per_graph, 0)
        return SampleResult(tokens * keep, logp * keep, slogp * keep)

    def _autocast(self, device: torch.device):
        enabled = self.config.dtype == "bfloat16" and device.type == "cuda"
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=False)

    def _eager(self, ctx: DecoderContext, uniforms: torch.Tensor, device: torch.device):
        b, s = uniforms.shape
        cache = self.policy.trunk.new_cache(max(s, 1))
        prev = torch.full((b,), BOS, dtype=torch.long, device=device)
        tokens = torch.zeros(b, s, dtype=torch.long, device=device)
        logp = torch.zeros(b, s, device=device)
        slogp = torch.zeros(b, s, device=device)
        for t in range(s):
            with self._autocast(device):
                logits = self.policy.step_logits(ctx, prev, t, cache, kv_len=t + 1)
            prev, logp[:, t], slogp[:, t] = choose(logits, uniforms[:, t], self.config)
            tokens[:, t] = prev
        return tokens, logp, slogp

    def _graphed_decoder(self, ctx: DecoderContext, b: int, s: int) -> "_GraphedDecoder":
        key = (b, s, ctx.group, ctx.memory_kv[0][0].shape[2], ctx.slot_embed.dtype)
        if self._graphed is None or self._graphed.key != key:
            self._graphed = None  # free the old graphs and cache before capturing new ones
            torch.cuda.empty_cache()
            self._graphed = _GraphedDecoder(self, ctx, key)
        return self._graphed


class _GraphedDecoder:
    """Static buffers, a KV cache and one captured CUDA graph per attention bucket, for one shape."""

    def __init__(self, sampler: Sampler, ctx: DecoderContext, key: tuple):
        self.key = key
        b, s = key[0], key[1]
        policy, config = sampler.policy, sampler.config
        device = ctx.slot_embed.device
        self.ctx = DecoderContext(slot_embed=ctx.slot_embed.clone(),
                                  memory_kv=[(k.clone(), v.clone()) for k, v in ctx.memory_kv],
                                  memory_mask=ctx.memory_mask.clone(), token_masks=ctx.token_masks.clone(),
                                  group=ctx.group)
        self.cache = policy.trunk.new_cache(s)
        self.prev = torch.full((b,), BOS, dtype=torch.long, device=device)
        self.step = torch.zeros(1, dtype=torch.long, device=device)
        self.uniforms = torch.ones(b, s, device=device)
        self.tokens = torch.zeros(b, s, dtype=torch.long, device=device)
        self.logp = torch.zeros(b, s, device=device)
        self.slogp = torch.zeros(b, s, device=device)
        bucket = config.kv_bucket
        self.spans = [min(s, (i + 1) * bucket) for i in range((s + bucket - 1) // bucket)]

        def step_fn(kv_len: int):
            with sampler._autocast(device):
                logits = policy.step_logits(self.ctx, self.prev, self.step, self.cache, kv_len=kv_len)
            token, lp, slp = choose(logits, self.uniforms.index_select(1, self.step)[:, 0], config)
            self.tokens.index_copy_(1, self.step, token[:, None])
            self.logp.index_copy_(1, self.step, lp[:, None])
            self.slogp.index_copy_(1, self.step, slp[:, None])
            self.prev.copy_(token)
            self.step.add_(1)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for span in self.spans:  # warm-up: allocates the cache, initialises kernels
                step_fn(span)
        torch.cuda.current_stream().wait_stream(side)
        self.graphs: list[torch.cuda.CUDAGraph] = []
        pool = None
        for span in self.spans:
            self._reset()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                step_fn(span)
            pool = graph.pool()
            self.graphs.append(graph)

    def _reset(self) -> None:
        self.cache.reset()
        self.step.zero_()
        self.prev.fill_(BOS)

    def run(self, ctx: DecoderContext, uniforms: torch.Tensor):
        self.ctx.slot_embed.copy_(ctx.slot_embed)
        for (k, v), (k_new, v_new) in zip(self.ctx.memory_kv, ctx.memory_kv):
            k.copy_(k_new)
            v.copy_(v_new)
        self.ctx.memory_mask.copy_(ctx.memory_mask)
        self.ctx.token_masks.copy_(ctx.token_masks)
        self.uniforms.copy_(uniforms)
        self._reset()
        s = uniforms.shape[1]
        bucket = self.spans[0]
        for t in range(s):
            self.graphs[min(t // bucket, len(self.graphs) - 1)].replay()
        return self.tokens.clone(), self.logp.clone(), self.slogp.clone()


@torch.no_grad()
def sample_by_rerun(policy: MaterialPolicy, batch: PolicyBatch, image_tokens: torch.Tensor, seed: int = 0,
                    config: SamplingConfig = SamplingConfig(), samples_per_graph: int = 1) -> SampleResult:
    """Reference sampler without a KV cache: the full model on the prefix at every step."""
    device = next(policy.parameters()).device
    batch = batch.to(device).repeat_interleave(samples_per_graph)
    image_tokens = image_tokens.to(device).repeat_interleave(samples_per_graph, 0)
    b, s = batch.size, batch.num_slots
    uniforms = draw_uniforms(b, s, seed, device)
    tokens = torch.zeros(b, s, dtype=torch.long, device=device)
    logp = torch.zeros(b, s, device=device)
    slogp = torch.zeros(b, s, device=device)
    for t in range(s):
        prefix = _prefix(batch, t + 1)
        logits = policy(prefix, image_tokens, tokens[:, : t + 1])[:, t]
        tokens[:, t], logp[:, t], slogp[:, t] = choose(logits, uniforms[:, t], config)
    keep = batch.slot_mask
    return SampleResult(tokens * keep, logp * keep, slogp * keep)


def _prefix(batch: PolicyBatch, length: int) -> PolicyBatch:
    return replace(batch, slot_node=batch.slot_node[:, :length], slot_param=batch.slot_param[:, :length],
                   slot_component=batch.slot_component[:, :length], slot_mask=batch.slot_mask[:, :length],
                   token_masks=batch.token_masks[:, :length], tokens=None)
