"""PPO for the parameter policy (paper §4.3–4.4), in one readable module (CleanRL's ppo.py is the model).

An episode is one parameter sequence; action i is the value token of slot i. Per token
    r_i = -kl_coeff * (log pi_old(s_i) - log pi_ref(s_i))            (Eq. 7, the KL regulariser)
    r_N += R_app                                                     (Eq. 8, appearance reward last)
with pi_ref the frozen pre-trained policy and pi_old the policy at the start of this update.
Advantages by GAE(gamma, lambda) over the slots with the value network's V(s_<i) (Eq. 9-10);
returns = advantages + V_old (Eq. 15). Each minibatch then minimises (Eq. 11-14)
    L = mean_i[ w_i * max(-A_i r_i, -A_i clip(r_i, 1-eps, 1+eps)) ]
        + c1 * 0.5 * mean_i[ max((V-R)^2, (V_old + clip(V-V_old, -eps_v, eps_v) - R)^2) ]
        - c2 * mean_i[ H(pi(.|s_<i)) ]
with r_i = pi/pi_old, A normalised per minibatch, means over real (unpadded) slots, and
w_i = min(pi_old/pi_behaviour, cap): the truncated importance weight of decoupled PPO / V-trace
that corrects for rows sampled by an older policy in asynchronous mode (1 in synchronous mode,
where behaviour and old policy are the same weights). Gradients are clipped; an epoch whose mean
approximate KL (k3 estimator) exceeds `target_kl` ends the update early.

`PPOLearner` owns the policy, the value network (`ValueNetwork.from_policy`: the policy's trunk
with a fresh scalar head), the frozen reference and one AdamW optimiser over both networks.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from learner.trajectory import StructureCache, TrajectoryTensors, to_tensors, trainable
from policy.model import MaterialPolicy, ValueNetwork
from policy.tokenizer import Vocabulary


class PPOConfig(BaseModel):
    """ProcMatRL's values by default (paper supplementary; `matrl/configs/train_paper.yaml`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kl_coeff: float = Field(0.001, ge=0, description="weight of the per-token KL penalty to the reference")
    gamma: float = Field(0.999, gt=0, le=1)
    lam: float = Field(0.98, ge=0, le=1, description="GAE lambda")
    clip: float = Field(0.2, gt=0, description="policy ratio clip epsilon")
    value_clip: float = Field(0.2, gt=0)
    value_coef: float = Field(0.1, ge=0)
    entropy_coef: float = Field(0.05, ge=0)
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(0.5, gt=0)
    epochs: int = Field(10, ge=1, description="passes over the buffer per update")
    minibatch: int = Field(48, ge=1, description="trajectories per gradient step")
    target_kl: float | None = Field(2.0, gt=0, description="stop the update after an epoch above this KL")
    importance_cap: float = Field(2.0, ge=1, description="truncation of pi_old/pi_behaviour (async)")
    normalize_advantages: bool = True
    reward_baseline: Literal["none", "target_mean"] = Field(
        "none", description="target_mean: subtract from each appearance reward the mean reward of the samples "
                            "drawn for the same target in the same batch (a per-target baseline that removes "
                            "how hard the target is; the value network then fits the remainder)")


# ---- the maths, on padded (B, S) tensors with a bool mask of real slots ---------------------------

def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_shaped_rewards(final_reward: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                      mask: torch.Tensor, kl_coeff: float) -> torch.Tensor:
    """Per-token rewards (B, S): -kl_coeff*(logp - ref_logp) at every real slot, plus the final
    (appearance) reward at each sequence's last real slot."""
    rewards = torch.where(mask, -kl_coeff * (logp - ref_logp), torch.zeros_like(logp))
    last = (mask.sum(1) - 1).clamp(min=0)
    has_slots = mask.any(1)
    rewards[torch.arange(rewards.shape[0], device=rewards.device)[has_slots], last[has_slots]] += final_reward[has_slots]
    return rewards


def target_mean_baseline(rewards: torch.Tensor, groups: list[str]) -> torch.Tensor:
    """Each reward minus the mean reward of its group (the samples of one target)."""
    index: dict[str, int] = {}
    ids = torch.tensor([index.setdefault(g, len(index)) for g in groups], device=rewards.device)
    sums = torch.zeros(len(index), device=rewards.device, dtype=rewards.dtype).index_add_(0, ids, rewards)
    counts = torch.zeros(len(index), device=rewards.device, dtype=rewards.dtype).index_add_(
        0, ids, torch.ones_like(rewards))
    return rewards - (sums / counts)[ids]


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over slots; the state after the last real slot is terminal.

    Returns (advantages, returns), both (B, S) and 0 at padding.
    """
    b, s = rewards.shape
    maskf = mask.float()
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(b, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(s)):
        if t + 1 < s:
            next_value, next_real = values[:, t + 1] * maskf[:, t + 1], maskf[:, t + 1]
        else:
            next_value = next_real = torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * next_real * running) * maskf[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * maskf


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(token) and the entropy of pi per slot, from masked logits (B, S, 128)."""
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, tokens[..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


@dataclass
class LossTerms:
    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor


def ppo_loss(new_logp: torch.Tensor, entropy: torch.Tensor, values: torch.Tensor, old_logp: torch.Tensor,
             behaviour_logp: torch.Tensor, old_values: torch.Tensor, advantages: torch.Tensor,
             returns: torch.Tensor, mask: torch.Tensor, config: PPOConfig) -> LossTerms:
    """The clipped surrogate, clipped value loss and entropy bonus of one minibatch (see module doc)."""
    maskf = mask.float()
    adv = masked_whiten(advantages, maskf) if config.normalize_advantages else advantages
    log_ratio = torch.where(mask, new_logp - old_logp, torch.zeros_like(new_logp))
    ratio = log_ratio.exp()
    weight = torch.where(mask, old_logp - behaviour_logp, torch.zeros_like(old_logp)).exp()
    weight = weight.clamp(max=config.importance_cap).detach()
    surrogate = torch.max(-adv * ratio, -adv * ratio.clamp(1 - config.clip, 1 + config.clip))
    policy_loss = masked_mean(weight * surrogate, maskf)
    v_clipped = old_values + (values - old_values).clamp(-config.value_clip, config.value_clip)
    value_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (v_clipped - returns) ** 2), maskf)
    ent = masked_mean(entropy, maskf)
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * ent
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - log_ratio, maskf)
        clipfrac = masked_mean(((ratio - 1).abs() > config.clip).float(), maskf)
    return LossTerms(loss, policy_loss, value_loss, ent, approx_kl, clipfrac)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over real slots (1: perfect, 0: no better than a constant)."""
    maskf = mask.float()
    var_r = masked_mean((returns - masked_mean(returns, maskf)) ** 2, maskf)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, maskf)) ** 2, maskf)
    return float(1 - var_d / var_r) if var_r > 0 else float("nan")


# ---- the learner ------------------------------------------------------------------------------

class PPOLearner:
    """Policy + value network + frozen reference + optimiser; `update(table)` is one PPO update."""

    def __init__(self, policy: MaterialPolicy, config: PPOConfig = PPOConfig(),
                 reference: MaterialPolicy | None = None, value: ValueNetwork | None = None,
                 device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.policy = policy.to(self.device)
        self.reference = copy.deepcopy(reference if reference is not None else policy).to(self.device)
        self.reference.requires_grad_(False).eval()
        self.value = (value if value is not None else ValueNetwork.from_policy(self.policy)).to(self.device)
        self.optimizer = torch.optim.AdamW(list(self.policy.parameters()) + list(self.value.parameters()),
                                           lr=config.lr, weight_decay=config.weight_decay)
        self.structures = StructureCache(Vocabulary.from_dict(policy.config.vocab))
        self.version = 0

    # ---- forward passes in chunks (no grad) ---------------------------------------------------
    @torch.no_grad()
    def _replay(self, t: TrajectoryTensors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log pi_old, log pi_ref and V_old of every slot, a minibatch at a time."""
        self.policy.eval()
        self.value.eval()
        outs = [], [], []
        for lo in range(0, t.size, self.config.minibatch):
            part = t.select(torch.arange(lo, min(lo + self.config.minibatch, t.size), device=self.device))
            b = part.batch
            outs[0].append(self.policy.log_probs(b, part.image_tokens))
            outs[1].append(self.reference.log_probs(b, part.image_tokens))
            outs[2].append(self.value(b, part.image_tokens))
        return tuple(torch.cat(o) for o in outs)

    def update(self, table: pa.Table, generator: torch.Generator | None = None) -> dict[str, float]:
        """One PPO update over a table of trajectories; returns its metrics."""
        start = time.perf_counter()
        cfg = self.config
        usable = trainable(table)
        table = table.filter(pa.array(usable))
        if table.num_rows == 0:
            raise ValueError("no trainable trajectories in the buffer (every row failed for "
                             "infrastructure reasons, e.g. reward timeouts)")
        t = to_tensors(table, self.structures).to(self.device)
        mask = t.batch.slot_mask
        old_logp, ref_logp, old_values = self._replay(t)
        final = t.rewards
        if cfg.reward_baseline == "target_mean":
            groups = [f"{a}|{v}" for a, v in zip(table.column("target_id").to_pylist(),
                                                   table.column("policy_version").to_pylist())]
            final = target_mean_baseline(final, groups)
        rewards = kl_shaped_rewards(final, old_logp, ref_logp, mask, cfg.kl_coeff)
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        generator = generator or torch.Generator().manual_seed(0)

        self.policy.train()
        self.value.train()
        sums: dict[str, float] = {}
        steps = epochs_run = 0
        stopped_early = False
        for _ in range(cfg.epochs):
            epoch_kl, epoch_steps = 0.0, 0
            order = torch.randperm(t.size, generator=generator).to(self.device)
            for lo in range(0, t.size, cfg.minibatch):
                idx = order[lo:lo + cfg.minibatch]
                mb = t.select(idx)
                logits = self.policy(mb.batch, mb.image_tokens)
                new_logp, entropy = token_log_probs(logits, mb.batch.tokens)
                values = self.value(mb.batch, mb.image_tokens)
                terms = ppo_loss(new_logp, entropy, values, old_logp[idx], t.behaviour_logp[idx],
                                 old_values[idx], advantages[idx], returns[idx], mb.batch.slot_mask, cfg)
                self.optimizer.zero_grad(set_to_none=True)
                terms.loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    list(self.policy.parameters()) + list(self.value.parameters()), cfg.grad_clip)
                self.optimizer.step()
                for name in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
                    sums[name] = sums.get(name, 0.0) + float(getattr(terms, name).detach())
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
                epoch_kl += float(terms.approx_kl)
                epoch_steps += 1
                steps += 1
            epochs_run += 1
            if cfg.target_kl is not None and epoch_kl / epoch_steps > cfg.target_kl:
                stopped_early = True
                break
        self.version += 1
        metrics = {k: v / steps for k, v in sums.items()}
        ok = t.ok
        metrics.update({
            "explained_variance": explained_variance(old_values, returns, mask),
            "kl_ref": float(masked_mean(old_logp - ref_logp, mask.float())),
            "reward_mean": float(t.rewards.mean()), "reward_max": float(t.rewards.max()),
            "reward_ok_mean": float(t.rewards[ok].mean()) if bool(ok.any()) else math.nan,
            "trajectories": t.size, "skipped_rows": int((~usable).sum()), "epochs": epochs_run,
            "early_stop": float(stopped_early), "steps": steps,
            "policy_lag_mean": float((self.version - 1 - t.versions).float().mean()),
            "policy_lag_max": float((self.version - 1 - t.versions).max()),
            "learn_s": time.perf_counter() - start})
        return metrics

    # ---- weights and state ------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        """The policy's tensors on the CPU (what rollout workers load)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.policy.state_dict().items()}

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "value": self.value.state_dict(),
                "reference": self.reference.state_dict(), "optimizer": self.optimizer.state_dict(),
                "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])
        self.reference.load_state_dict(state["reference"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])


__all__ = ["LossTerms", "PPOConfig", "PPOLearner", "explained_variance", "gae", "kl_shaped_rewards",
           "masked_mean", "masked_whiten", "ppo_loss", "target_mean_baseline", "token_log_probs"]
