"""matrl: RL fine-tuning of procedural material parameter generators on a Ray cluster."""

__version__ = "0.1.0"
