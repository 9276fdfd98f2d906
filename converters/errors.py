class ConversionError(Exception):
    """Bad input: one line that names the file, key or value and what was expected. The CLI exits 2 on it."""
