from setuptools import setup

# Metadata lives in setup.cfg; this file keeps `pip install .` and Debian's pybuild happy.
setup()
