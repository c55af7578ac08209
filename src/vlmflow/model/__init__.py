"""Model families, fine-tuning through LLaMA-Factory, label scoring and weight averaging of fold models."""
