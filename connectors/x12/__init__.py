"""X12 5010: build 837I/837P claims, validate with pyx12, read 999/277CA/835 into canonical events."""
