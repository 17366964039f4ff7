"""harness: a containerised reproducibility harness for ML experiments.

This module stays standard-library only: it is mounted read-only into every run's
container so that ``from harness import track`` works without being part of the image.
"""

__version__ = "0.1.0"
