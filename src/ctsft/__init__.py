"""Circuit-Targeted Supervised Fine-Tuning."""
