"""Strategies to copy: each file is one complete strategy (see README, "Writing a strategy")."""
