"""The parameter policy: graph tokenizer, image encoders, transformer policy/value networks, sampler."""
