"""Rollout workers: target sources (`targets`), the plain rollout loop (`worker`) and its Ray actor
shell (`actor`): hold the policy's weights, sample trajectories, request rewards, hand Arrow
batches to the replay buffer."""
