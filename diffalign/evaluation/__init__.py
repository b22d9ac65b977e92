"""Evaluation of text-to-image models: prompt sets, generation, scoring, statistics and reports."""
