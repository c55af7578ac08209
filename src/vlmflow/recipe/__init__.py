"""The recipe's steps after the fold models: label correction, pseudo-labels, retrained final models, the submission."""
