"""fedhaven's task in plain torch: model, data, DP training, privacy accounting, configuration (no Flower import)."""
