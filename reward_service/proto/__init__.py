"""Python modules generated from proto/reward.proto (the reward service's gRPC API).

They live here rather than in a top-level `proto` package because `proto` is taken by
proto-plus (installed with ray[default] via google-api-core). Regenerate with
`python -m reward_service.proto.codegen`; tests/test_reward_proto.py checks they are current.
"""
