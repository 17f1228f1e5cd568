"""The models a run uses: built-in and tiny models, a base's parts, token rows, text features, style LoRAs."""
