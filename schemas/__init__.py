"""The one definition of a reading.

`schemas.channels`: the channel list and the landing columns (plain data).
`schemas.reading`: the pandera model built from them, and `split_valid`.
"""
