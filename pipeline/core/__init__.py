"""Core plumbing shared by every stage: the error tree, configuration loading, durable file I/O, environment tuning."""
