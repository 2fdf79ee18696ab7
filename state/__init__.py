"""Per-user durable state: the behavior window, its binary codec and a derived-state cache."""
