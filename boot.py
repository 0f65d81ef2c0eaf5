# Runs before main.py on every boot. Nothing to set up: the wake cycle starts in main.py.
