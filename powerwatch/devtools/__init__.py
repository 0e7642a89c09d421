"""Development tools: the station simulator and `powerwatch demo`. Not part of what a site runs:
only `powerwatch.cli` imports them, when one of their commands runs.
"""
