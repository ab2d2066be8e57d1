"""Adapters merged into full versions of their own: the job (models), its run (services), the weights (peft)."""
