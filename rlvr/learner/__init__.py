"""The policy learner: one DeepSpeed rank's actor (actor.py) and its forward (forward.py: collate, log-probs)."""
