"""Member data platform: shared settings, database access and the `mdp` operator CLI."""
