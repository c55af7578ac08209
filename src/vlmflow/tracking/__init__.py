"""MLflow runs, and the offline store used when the tracking server cannot be reached."""
