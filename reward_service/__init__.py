"""The appearance reward as a service (paper Eq. 5-6).

`api` (types shared by client and server), `config`, `metrics`/`backbones` (Gram + L*a*b* on
pretrained CNN features), `worker` (execute, render, score), `pool` (Ray actors), `server` and
`client` (gRPC + Arrow). Import the module you need: this package's `__init__` imports nothing, so
that `reward_service.client` stays free of torch and Ray.
"""
