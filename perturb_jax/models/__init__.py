"""Classifiers under explanation."""
