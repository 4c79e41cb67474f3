"""falsify: testable attribution maps for face verification."""
__version__ = "0.1.0"
