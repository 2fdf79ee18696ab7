"""Test support: factories, fakes, fixtures and the reference-model checks the tests share.

Test modules import from here (and from ``tests.corpus``), never from each other or
from a ``conftest.py``: a helper that two test files need lives in one support module,
so running, moving or deleting one test file never breaks another.
"""
