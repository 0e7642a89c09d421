"""Stage: hourly/daily rollups and energy accounting: the maths (`compute`, `energy`), the
refresh (`refresh`), reading them (`queries`, `completeness`), billing statements
(`statements`).
"""
