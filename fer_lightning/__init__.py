"""fer-lightning."""
