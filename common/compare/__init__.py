"""The side-by-side comparison of the three chapters (``python -m common.compare``).

``runner.py`` runs each chapter's training and evaluation as subprocesses (the chapters stay
independent of each other); ``report.py`` turns their run directories into tables and figures.
"""
