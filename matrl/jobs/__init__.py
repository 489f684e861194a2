"""Job wiring: what creates the Ray actors and services of a run and connects them.

The CLI (`matrl.commands`) parses arguments into typed configs and calls one function here;
nothing here parses arguments. `ray_runtime` starts or joins Ray, `reward` starts the reward
service, `demo` and `train` assemble whole runs.
"""
