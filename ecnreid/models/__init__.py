"""Networks: backbones with named stages, the ECN head and model, and domain-generalisation modules."""
