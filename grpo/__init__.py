"""Online RL with verifiable rewards (GRPO / DAPO / Dr. GRPO) on TRL's GRPOTrainer: `python -m grpo`."""
