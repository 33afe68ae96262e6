"""The build plan: strict, frozen Recipe/Target/BuildPlan (config.py), the catalog of recipes/ and
targets/ (catalog.py), and the toolchain, disk and memory checks before a build (doctor.py).
May import errors and progress only."""
