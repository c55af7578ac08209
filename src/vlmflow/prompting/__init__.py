"""Prompts and their variants, the teacher model's reasons and descriptions, and general data mixed into training."""
