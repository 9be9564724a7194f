"""Using an adapted model: its model card, feature extraction to disk, search of a gallery, export."""
