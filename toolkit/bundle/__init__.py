"""The bundle a device receives: its layout, README and manifest.json (layout.py), the staging
folder that becomes it by one rename (staging.py), pack/unpack (pack.py), the CI workflow (ci.py)
and the runner templates (runners/). May import plan, source and below."""
