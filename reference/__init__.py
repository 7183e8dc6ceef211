"""Reference transcriptions of the original authors' code, for tests and benchmarks only.

Not part of kdx: nothing under ``kdx/`` imports this folder, and it is not installed with the
package (``[tool.setuptools.packages.find] include = ["kdx*"]``). tests/conftest.py puts the
repository root on ``sys.path``; a benchmark inserts the root itself.
"""
