"""vmil: visual imitation learning from observation, model-based (VMIL) and model-free baselines."""
__version__ = "0.1.0"
